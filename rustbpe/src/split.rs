//! Pre-tokenization: cut text into chunks with a regex before BPE sees it.
//!
//! BPE never merges across a chunk boundary, so the split decides what a token can be:
//! " world" may become one token, "d. The" never will. Splitting is also the most
//! expensive part of training (every byte of the corpus goes through the regex), so the
//! default pattern gets a fast path.

/// nanochat's split pattern: GPT-4's, except that numbers split into groups of at most
/// 2 digits (GPT-4 uses 3), which spends fewer vocabulary slots on numbers.
pub const DEFAULT_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";

/// DEFAULT_PATTERN rewritten for the `regex` crate, which has no lookahead and no
/// possessive quantifiers but runs a DFA (no backtracking, linear time):
/// - `?+` -> `?` and `++` -> `+`: possessive means "never give characters back". Here the
///   class being repeated cannot match what follows it (a non-letter before `\p{L}+`, a
///   non-space before `[\r\n]*`), so giving back could never help and greedy = possessive.
/// - `\s+(?!\S)|\s+` -> `\s+`: the lookahead is put back by `dfa_chunks`.
const DEFAULT_PATTERN_NO_LOOKAHEAD: &str =
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+";

/// A compiled split pattern: the fast DFA for the default, a backtracking VM otherwise.
pub enum Splitter {
    /// DEFAULT_PATTERN, run as DEFAULT_PATTERN_NO_LOOKAHEAD (see DEFAULT_DFA) plus a fix-up.
    Default,
    /// Any other pattern: fancy-regex supports lookaround and possessives, but slowly.
    Backtracking(fancy_regex::Regex),
}

thread_local! {
    /// The default pattern's DFA, compiled once per thread. A `regex::Regex` keeps its
    /// scratch space in a pool that is lock-free only for the first thread that uses it;
    /// rayon workers sharing one Regex would take a mutex on every match (~25% slower).
    static DEFAULT_DFA: regex::Regex =
        regex::Regex::new(DEFAULT_PATTERN_NO_LOOKAHEAD).expect("the built-in pattern compiles");
}

impl Splitter {
    /// Compile `pattern`; the error message names the pattern and what is wrong with it.
    pub fn new(pattern: &str) -> Result<Splitter, String> {
        if pattern == DEFAULT_PATTERN {
            return Ok(Splitter::Default);
        }
        fancy_regex::Regex::new(pattern)
            .map(Splitter::Backtracking)
            .map_err(|err| format!("invalid split pattern {pattern:?}: {err}"))
    }

    /// Call `on_chunk` with each chunk of `text`, in order.
    ///
    /// Fails only if the backtracking VM gives up on a pathological pattern.
    pub fn for_each_chunk<'t>(&self, text: &'t str, mut on_chunk: impl FnMut(&'t str)) -> Result<(), String> {
        match self {
            Splitter::Default => {
                DEFAULT_DFA.with(|re| dfa_chunks(re, text, on_chunk));
                Ok(())
            }
            Splitter::Backtracking(re) => {
                for found in re.find_iter(text) {
                    let found = found.map_err(|err| format!("split pattern failed on a text: {err}"))?;
                    on_chunk(found.as_str());
                }
                Ok(())
            }
        }
    }
}

/// Run the lookahead-free default pattern and put back what `\s+(?!\S)` does.
///
/// In the original, a whitespace run that is followed by text matches all but its last
/// character, so that character starts the next chunk: "a   b" -> "a", "  ", " b". The
/// DFA's `\s+` takes the whole run; when that happened we hand the last character back.
fn dfa_chunks<'t>(re: &regex::Regex, text: &'t str, mut on_chunk: impl FnMut(&'t str)) {
    let mut pos = 0;
    while let Some(found) = re.find_at(text, pos) {
        let (start, mut end) = (found.start(), found.end());
        if is_run_before_text(&text[start..end], end < text.len()) {
            let last = text[start..end].chars().next_back().unwrap();
            end -= last.len_utf8();
        }
        on_chunk(&text[start..end]);
        pos = end;
    }
}

/// True when a chunk came from the final `\s+` branch, is 2+ characters long and more
/// text follows it (`\s+` is greedy, so what follows is not whitespace).
///
/// Only the `\s+` branch can end in whitespace other than \r or \n: letter, digit and
/// punctuation branches end in their own class, and `\s*[\r\n]` ends in \r or \n.
fn is_run_before_text(chunk: &str, text_follows: bool) -> bool {
    let mut chars = chunk.chars().rev();
    let last = chars.next();
    let from_space_branch = matches!(last, Some(c) if c.is_whitespace() && c != '\r' && c != '\n');
    from_space_branch && chars.next().is_some() && text_follows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All chunks of `text`, through whichever engine `splitter` uses.
    fn chunks(splitter: &Splitter, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        splitter.for_each_chunk(text, |c| out.push(c.to_string())).unwrap();
        out
    }

    /// The backtracking engine running DEFAULT_PATTERN itself: the ground truth.
    fn reference() -> Splitter {
        Splitter::Backtracking(fancy_regex::Regex::new(DEFAULT_PATTERN).unwrap())
    }

    #[test]
    fn default_pattern_takes_the_fast_path() {
        assert!(matches!(Splitter::new(DEFAULT_PATTERN).unwrap(), Splitter::Default));
        assert!(matches!(Splitter::new(r"\w+|\s+").unwrap(), Splitter::Backtracking(_)));
    }

    #[test]
    fn whitespace_before_text_gives_back_one_char() {
        let fast = Splitter::new(DEFAULT_PATTERN).unwrap();
        assert_eq!(chunks(&fast, "a   b"), ["a", "  ", " b"]);
        assert_eq!(chunks(&fast, "a \tb"), ["a", " ", "\tb"]);
        assert_eq!(chunks(&fast, "a   "), ["a", "   "]);
        assert_eq!(chunks(&fast, "x  \n  y"), ["x", "  \n", " ", " y"]);
    }

    #[test]
    fn invalid_pattern_is_an_error_naming_it() {
        let err = Splitter::new("(unclosed").err().unwrap();
        assert!(err.contains("(unclosed"), "{err}");
    }

    /// A tiny deterministic RNG (xorshift64*), so the test needs no extra crate.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545F4914F6CDD1D) >> 33) as usize % n
        }
    }

    #[test]
    fn fast_split_equals_fancy_regex_on_adversarial_text() {
        // Pieces chosen to hit every branch and every boundary between branches.
        let pieces = [
            " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{3000}", "\u{2028}", "\u{b}", "\u{c}",
            "a", "Z", "é", "ß", "ſ", "\u{212a}", "hello", "World", "'s", "'S", "'ll", "'VE", "'re", "'d", "'t", "'m", "'x",
            "0", "7", "123", "٣", "½", "Ⅻ", "!", "?!", "...", "-", "'", "\"", "(", ")", "@", "#", "$", "_",
            "中", "文字", "日本語", "한국어", "😀", "👍🏽", "🏳️‍🌈", "\u{301}", "\u{200b}", "\u{feff}", "\u{0}",
        ];
        let fast = Splitter::new(DEFAULT_PATTERN).unwrap();
        let slow = reference();
        let mut rng = Rng(0x9E3779B97F4A7C15);
        for _ in 0..20_000 {
            let n = 1 + rng.below(12);
            let text: String = (0..n).map(|_| pieces[rng.below(pieces.len())]).collect();
            assert_eq!(chunks(&fast, &text), chunks(&slow, &text), "text {text:?}");
        }
    }

    #[test]
    fn fast_split_equals_fancy_regex_on_real_looking_text() {
        let text = "Hello world!  It's 2024: we'd  paid $1,234.56 for   it.\n\n  Then\t\tthe \u{a0}end...\r\n\
                    I'LL say 'hi' (ok?) 中文 text  😀😀  x\u{3000}\u{3000}y   \n";
        let fast = Splitter::new(DEFAULT_PATTERN).unwrap();
        assert_eq!(chunks(&fast, text), chunks(&reference(), text));
        assert_eq!(chunks(&fast, text).concat(), text, "chunks cover the text");
    }
}
