//! Counting chunks: BPE only needs each distinct chunk once, with how often it occurs.
//!
//! Natural text repeats itself: 50 MB of English holds ~10M chunks but only a few hundred
//! thousand distinct ones. Training on (chunk, count) pairs instead of the raw stream
//! makes every later step proportionally cheaper.

use ahash::AHashMap;
use rayon::prelude::*;

use crate::split::Splitter;

/// Distinct chunks of a batch and their counts, borrowing the chunk text from the batch.
pub type BatchCounts<'t> = AHashMap<&'t str, u64>;

/// Split every text of the batch and count the chunks, using all cores.
///
/// Each rayon worker counts into its own hash map (no locks, no shared writes); the maps
/// are then merged pairwise. Keys borrow from `texts`, so counting allocates nothing per
/// chunk.
pub fn count_batch<'t>(texts: &'t [String], splitter: &Splitter) -> Result<BatchCounts<'t>, String> {
    texts
        .par_iter()
        .try_fold(BatchCounts::default, |mut counts, text| {
            splitter.for_each_chunk(text, |chunk| *counts.entry(chunk).or_insert(0) += 1)?;
            Ok(counts)
        })
        .try_reduce(BatchCounts::default, |a, b| Ok(merge_counts(a, b)))
}

/// Add two count maps, iterating over the smaller one.
fn merge_counts<'t>(a: BatchCounts<'t>, b: BatchCounts<'t>) -> BatchCounts<'t> {
    let (mut big, small) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    for (chunk, n) in small {
        *big.entry(chunk).or_insert(0) += n;
    }
    big
}

/// Add a batch's counts into the running totals, copying only chunks never seen before.
pub fn add_batch(totals: &mut AHashMap<String, u64>, batch: BatchCounts<'_>) {
    for (chunk, n) in batch {
        match totals.get_mut(chunk) {
            Some(total) => *total += n,
            None => {
                totals.insert(chunk.to_owned(), n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::DEFAULT_PATTERN;

    #[test]
    fn counts_add_up_across_texts_and_batches() {
        let splitter = Splitter::new(DEFAULT_PATTERN).unwrap();
        let texts: Vec<String> = (0..1000).map(|i| format!("the cat {}", i % 3)).collect();
        let mut totals = AHashMap::new();
        add_batch(&mut totals, count_batch(&texts, &splitter).unwrap());
        add_batch(&mut totals, count_batch(&texts[..10], &splitter).unwrap());
        assert_eq!(totals["the"], 1010);
        assert_eq!(totals[" cat"], 1010);
        assert_eq!(totals[" "], 1010);
        assert_eq!(totals["0"] + totals["1"] + totals["2"], 1010);
        assert_eq!(totals.len(), 6);
    }
}
