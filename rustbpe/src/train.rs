//! Learning BPE merges from counted words, with incremental pair counts.
//!
//! The textbook loop (minbpe) recounts every adjacent pair of the whole corpus after each
//! merge: O(corpus) per merge. But a merge only changes the words that contain the merged
//! pair, and only the pairs right next to it. So we keep
//! - for each adjacent pair, how often it occurs (weighted by word counts) and which
//!   words contain it, so a merge visits only those words,
//! - a max-heap of (count, pair) to find the most frequent pair quickly,
//! and update all three from the few pairs each merge creates or destroys.
//!
//! Tie-breaking, so training is deterministic: among pairs with the same count, the
//! lexicographically smallest pair of token ids, (a, b) < (a', b'), is merged first.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use ahash::AHashMap;

/// Two adjacent token ids.
pub type Pair = (u32, u32);

/// The ids of the 256 single-byte tokens are 0..=255; merge number i creates id 256 + i.
pub const FIRST_MERGE_ID: u32 = 256;

/// A heap entry: a pair and its count when it was pushed (possibly out of date).
#[derive(Debug, PartialEq, Eq)]
struct Candidate {
    count: i64,
    pair: Pair,
}

impl Ord for Candidate {
    /// Larger count first; on equal counts the smaller pair counts as "larger", so the
    /// max-heap pops it first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.count.cmp(&other.count).then_with(|| other.pair.cmp(&self.pair))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Replace every occurrence of `pair` in `ids` by `new_id`, left to right, in place, and
/// record how the word's adjacent pairs changed: `changes` gets (pair, -1) for each pair
/// that disappeared and (pair, +1) for each pair that appeared.
///
/// Merging (a, b) -> X at `... x a b y ...` removes (x, a), (a, b), (b, y) and adds
/// (x, X), (X, y). When two occurrences touch (`a b a b` -> `X X`), the pair between
/// them, (b, a) -> (X, X), is handled once, by the second occurrence.
pub fn merge_pair(ids: &mut Vec<u32>, pair: Pair, new_id: u32, changes: &mut Vec<(Pair, i64)>) {
    let (a, b) = pair;
    let n = ids.len();
    let pair_at = |ids: &[u32], i: usize| i + 1 < n && ids[i] == a && ids[i + 1] == b;
    // Read position `read`, write position `write <= read`: the word shrinks in place.
    // ids[read - 1] is never overwritten before we read it (writes lag behind reads).
    let (mut read, mut write) = (0, 0);
    while read < n {
        if !pair_at(ids, read) {
            ids[write] = ids[read];
            write += 1;
            read += 1;
            continue;
        }
        if write > 0 {
            changes.push(((ids[read - 1], a), -1));
            changes.push(((ids[write - 1], new_id), 1));
        }
        changes.push((pair, -1));
        let next = read + 2;
        if next < n && !pair_at(ids, next) {
            changes.push(((b, ids[next]), -1));
            changes.push(((new_id, ids[next]), 1));
        }
        ids[write] = new_id;
        write += 1;
        read += 2;
    }
    ids.truncate(write);
}

/// What we track per adjacent pair.
#[derive(Default)]
struct PairStats {
    /// Occurrences over the whole corpus: sum over words of (occurrences in word) * (word count).
    count: i64,
    /// Indices of the words containing the pair, sorted, no duplicates. It may still
    /// name words that lost the pair since (merging there finds nothing, harmlessly).
    words: Vec<u32>,
}

/// The merge state: words as token ids, and the pair statistics kept up to date.
struct Trainer {
    words: Vec<Vec<u32>>,
    word_counts: Vec<i64>,
    pairs: AHashMap<Pair, PairStats>,
    heap: BinaryHeap<Candidate>,
}

impl Trainer {
    /// Count every adjacent pair once, at the start: the only full pass over the words.
    fn new(words: Vec<Vec<u32>>, word_counts: Vec<i64>) -> Trainer {
        assert!(words.len() <= u32::MAX as usize, "too many distinct chunks");
        let mut pairs: AHashMap<Pair, PairStats> = AHashMap::new();
        for (w, ids) in words.iter().enumerate() {
            for window in ids.windows(2) {
                let stats = pairs.entry((window[0], window[1])).or_default();
                stats.count += word_counts[w];
                // Words are visited in order, so a repeat of this word would be last.
                if stats.words.last() != Some(&(w as u32)) {
                    stats.words.push(w as u32);
                }
            }
        }
        let heap = pairs.iter().map(|(&pair, stats)| Candidate { count: stats.count, pair }).collect();
        Trainer { words, word_counts, pairs, heap }
    }

    /// The most frequent pair (smallest on ties), or None when no pair is left.
    ///
    /// Heap entries can be stale: a pair's count only ever goes down after it is pushed
    /// (a merge creates pairs only with its brand-new token). So an entry is an upper
    /// bound, and the top entry is the true maximum once its count is confirmed current.
    fn pop_best(&mut self) -> Option<Candidate> {
        while let Some(top) = self.heap.pop() {
            let current = self.pairs.get(&top.pair).map_or(0, |stats| stats.count);
            if current == top.count {
                return Some(top);
            }
            if current > 0 {
                self.heap.push(Candidate { count: current, pair: top.pair });
            }
        }
        None
    }

    /// Merge `pair` into `new_id` in every word containing it, updating the statistics.
    fn apply_merge(&mut self, pair: Pair, new_id: u32) {
        let word_indices = std::mem::take(&mut self.pairs.get_mut(&pair).expect("a live pair").words);
        let mut changes = Vec::new();
        let mut new_pairs = Vec::new();
        for w in word_indices {
            changes.clear();
            merge_pair(&mut self.words[w as usize], pair, new_id, &mut changes);
            let count = self.word_counts[w as usize];
            for &(changed, delta) in &changes {
                let stats = self.pairs.entry(changed).or_default();
                stats.count += delta * count;
                if stats.count == 0 {
                    // Gone everywhere: forget it (its heap entry will be dropped as stale).
                    self.pairs.remove(&changed);
                } else if delta > 0 {
                    // Only pairs with new_id appear, and they are new in this merge.
                    if stats.words.is_empty() {
                        new_pairs.push(changed);
                    }
                    if stats.words.last() != Some(&w) {
                        stats.words.push(w);
                    }
                }
            }
        }
        debug_assert!(!self.pairs.contains_key(&pair), "every occurrence was merged");
        for pair in new_pairs {
            self.heap.push(Candidate { count: self.pairs[&pair].count, pair });
        }
    }
}

/// Learn up to `num_merges` merges from distinct words (byte ids) and their counts.
///
/// Returns the merged pairs in order; merge i created token id 256 + i. Returns fewer
/// when the words run out of pairs (every word already is a single token).
pub fn learn_merges(words: Vec<Vec<u32>>, word_counts: Vec<i64>, num_merges: usize) -> Vec<Pair> {
    let mut trainer = Trainer::new(words, word_counts);
    let mut merges = Vec::new(); // not with_capacity(num_merges): that may be absurdly large
    while merges.len() < num_merges {
        let Some(best) = trainer.pop_best() else { break };
        let new_id = FIRST_MERGE_ID + merges.len() as u32;
        trainer.apply_merge(best.pair, new_id);
        merges.push(best.pair);
        if merges.len() % 1000 == 0 {
            log::debug!("merge {}/{}: {:?} -> {} ({} occurrences)", merges.len(), num_merges, best.pair, new_id, best.count);
        }
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook step, for comparison: count all pairs from scratch.
    fn all_pairs(ids: &[u32]) -> AHashMap<Pair, i64> {
        let mut counts = AHashMap::new();
        for w in ids.windows(2) {
            *counts.entry((w[0], w[1])).or_insert(0) += 1;
        }
        counts
    }

    /// merge_pair's recorded changes must equal (pairs after) - (pairs before).
    fn check_changes(before: &[u32], pair: Pair) {
        let mut ids = before.to_vec();
        let mut changes = Vec::new();
        merge_pair(&mut ids, pair, 99, &mut changes);
        let mut expected = all_pairs(&ids);
        for (p, n) in all_pairs(before) {
            *expected.entry(p).or_insert(0) -= n;
        }
        expected.retain(|_, n| *n != 0);
        let mut got: AHashMap<Pair, i64> = AHashMap::new();
        for (p, d) in changes {
            *got.entry(p).or_insert(0) += d;
        }
        got.retain(|_, n| *n != 0);
        assert_eq!(got, expected, "merging {pair:?} in {before:?} -> {ids:?}");
    }

    #[test]
    fn merge_pair_replaces_left_to_right() {
        let mut ids = vec![1, 1, 1, 2, 1, 2, 1, 2];
        merge_pair(&mut ids, (1, 2), 9, &mut Vec::new());
        assert_eq!(ids, [1, 1, 9, 9, 9]);
        let mut ids = vec![5, 5, 5];
        merge_pair(&mut ids, (5, 5), 9, &mut Vec::new());
        assert_eq!(ids, [9, 5]);
    }

    #[test]
    fn merge_pair_changes_match_a_full_recount() {
        let words: [&[u32]; 9] = [
            &[1, 2], &[1, 2, 1, 2], &[3, 1, 2, 4], &[1, 1, 1], &[1, 1, 1, 1],
            &[2, 1, 2, 1, 2, 2], &[1, 2, 3, 1, 2], &[7], &[1, 1, 2, 1, 1, 2, 2],
        ];
        for w in words {
            for pair in [(1, 2), (1, 1), (2, 1), (2, 2)] {
                check_changes(w, pair);
            }
        }
    }

    #[test]
    fn ties_go_to_the_smallest_pair() {
        // (1,2), (2,3) and (3,4) all occur 5 times: they are merged in pair order.
        let merges = learn_merges(vec![vec![1, 2], vec![2, 3], vec![3, 4]], vec![5, 5, 5], 3);
        assert_eq!(merges, [(1, 2), (2, 3), (3, 4)]);
        let merges = learn_merges(vec![vec![3, 4], vec![1, 2]], vec![5, 6], 2);
        assert_eq!(merges, [(1, 2), (3, 4)]);
    }

    /// The textbook trainer: recount all pairs before every merge.
    fn learn_merges_by_recounting(mut words: Vec<Vec<u32>>, counts: Vec<i64>, num_merges: usize) -> Vec<Pair> {
        let mut merges = Vec::new();
        while merges.len() < num_merges {
            let mut pair_counts: AHashMap<Pair, i64> = AHashMap::new();
            for (ids, &n) in words.iter().zip(&counts) {
                for (pair, k) in all_pairs(ids) {
                    *pair_counts.entry(pair).or_insert(0) += k * n;
                }
            }
            let Some((&best, _)) = pair_counts.iter().max_by(|x, y| x.1.cmp(y.1).then_with(|| y.0.cmp(x.0))) else { break };
            let new_id = FIRST_MERGE_ID + merges.len() as u32;
            for ids in &mut words {
                merge_pair(ids, best, new_id, &mut Vec::new());
            }
            merges.push(best);
        }
        merges
    }

    #[test]
    fn incremental_updates_equal_recounting() {
        // Small alphabets make long repeats ("aaaa", "abab") and many ties: the hard cases.
        let mut state = 12345u64;
        let mut next = |n: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        for alphabet in [2, 3, 5, 20] {
            let words: Vec<Vec<u32>> = (0..300).map(|_| (0..1 + next(12)).map(|_| next(alphabet) as u32).collect()).collect();
            let counts: Vec<i64> = (0..300).map(|_| 1 + next(5) as i64).collect();
            let expected = learn_merges_by_recounting(words.clone(), counts.clone(), 200);
            assert_eq!(learn_merges(words, counts, 200), expected, "alphabet of {alphabet}");
        }
    }

    #[test]
    fn stops_when_no_pairs_are_left() {
        let merges = learn_merges(vec![vec![1, 2, 3]], vec![1], 10);
        assert_eq!(merges, [(1, 2), (256, 3)]);
    }
}
