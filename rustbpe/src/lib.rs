//! rustbpe: train a byte-level BPE tokenizer (GPT-4 style split) fast, from Python.
//!
//! ```python
//! tok = rustbpe.Tokenizer()
//! tok.train_from_iterator(texts, vocab_size=32768)   # any iterator of str
//! ranks = dict(tok.get_mergeable_ranks())           # bytes -> id, for tiktoken
//! ```
//! Training: split each text into chunks with a regex (split.rs), count the distinct
//! chunks in parallel (count.rs), then learn merges with incremental pair counts
//! (train.rs). Encoding is here for checking; real encoding is done by tiktoken.

pub mod count;
pub mod split;
pub mod train;

use ahash::AHashMap;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyString};

use count::{add_batch, count_batch};
use split::{Splitter, DEFAULT_PATTERN};
use train::{learn_merges, merge_pair, Pair, FIRST_MERGE_ID};

/// A byte-level BPE tokenizer: a split pattern and an ordered list of merges.
#[pyclass(module = "rustbpe", text_signature = "()")]
pub struct Tokenizer {
    pattern: String,
    splitter: Splitter,
    /// merges[i] is the pair that was merged into token id 256 + i.
    merges: Vec<Pair>,
    /// The same merges as a lookup: pair -> merged token id (its rank).
    merge_ids: AHashMap<Pair, u32>,
}

#[pymethods]
impl Tokenizer {
    /// An untrained tokenizer: the default pattern and the 256 byte tokens.
    #[new]
    fn new() -> Tokenizer {
        let splitter = Splitter::new(DEFAULT_PATTERN).expect("the default pattern compiles");
        Tokenizer { pattern: DEFAULT_PATTERN.to_string(), splitter, merges: Vec::new(), merge_ids: AHashMap::new() }
    }

    /// Learn vocab_size - 256 merges from an iterator of str.
    ///
    /// The iterator is consumed `buffer_size` texts at a time; only the current batch and
    /// the distinct chunks seen so far are held in memory. If the data runs out of pairs
    /// before vocab_size is reached, training stops early with a UserWarning and the
    /// vocabulary is smaller than asked. Each step merges the most frequent adjacent
    /// pair; ties go to the smallest pair of token ids, so training is deterministic.
    #[pyo3(text_signature = "(self, iterator, vocab_size, buffer_size=8192, pattern=None)")]
    #[args(buffer_size = "8192", pattern = "None")]
    fn train_from_iterator(
        &mut self,
        py: Python<'_>,
        iterator: &PyAny,
        vocab_size: i64,
        buffer_size: i64,
        pattern: Option<String>,
    ) -> PyResult<()> {
        if vocab_size < 256 {
            return Err(PyValueError::new_err(format!(
                "vocab_size must be at least 256 (one token per byte value), got {vocab_size}"
            )));
        }
        if vocab_size > u32::MAX as i64 {
            return Err(PyValueError::new_err(format!("vocab_size must fit token ids in 32 bits, got {vocab_size}")));
        }
        if buffer_size < 1 {
            return Err(PyValueError::new_err(format!("buffer_size must be at least 1, got {buffer_size}")));
        }
        let pattern = pattern.unwrap_or_else(|| DEFAULT_PATTERN.to_string());
        let splitter = Splitter::new(&pattern).map_err(PyValueError::new_err)?;

        let chunk_counts = count_chunks(py, iterator, &splitter, buffer_size as usize)?;
        let num_merges = (vocab_size - 256) as usize;
        let merges = py.allow_threads(|| {
            let (words, counts) = into_words(chunk_counts);
            learn_merges(words, counts, num_merges)
        });
        if merges.len() < num_merges {
            let message = format!(
                "rustbpe: the training text only supports {} merges, so the vocabulary has {} tokens instead of {vocab_size}",
                merges.len(),
                256 + merges.len()
            );
            let user_warning = py.import("builtins")?.getattr("UserWarning")?;
            PyErr::warn(py, user_warning, &message, 1)?;
        }
        let merge_ids = merges.iter().enumerate().map(|(i, &pair)| (pair, FIRST_MERGE_ID + i as u32)).collect();
        *self = Tokenizer { pattern, splitter, merges, merge_ids };
        Ok(())
    }

    /// The regex that splits text into chunks before BPE.
    fn get_pattern(&self) -> String {
        self.pattern.clone()
    }

    /// Number of tokens: 256 bytes plus one per merge.
    #[getter]
    fn vocab_size(&self) -> usize {
        256 + self.merges.len()
    }

    /// [(token bytes, rank)]: the 256 single bytes, then each merge's concatenation.
    /// `dict(...)` of this is what tiktoken calls mergeable_ranks.
    fn get_mergeable_ranks<'py>(&self, py: Python<'py>) -> &'py PyList {
        let mut token_bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        for &(a, b) in &self.merges {
            let merged = [token_bytes[a as usize].as_slice(), token_bytes[b as usize].as_slice()].concat();
            token_bytes.push(merged);
        }
        PyList::new(py, token_bytes.iter().enumerate().map(|(rank, bytes)| (PyBytes::new(py, bytes), rank)))
    }

    /// Token ids of `text`: split, then in each chunk apply merges lowest rank first.
    #[pyo3(text_signature = "(self, text)")]
    fn encode(&self, py: Python<'_>, text: &str) -> PyResult<Vec<u32>> {
        py.allow_threads(|| {
            let mut ids = Vec::with_capacity(text.len() / 3);
            self.splitter.for_each_chunk(text, |chunk| self.encode_chunk(chunk, &mut ids))?;
            Ok(ids)
        })
        .map_err(PyRuntimeError::new_err::<String>)
    }
}

impl Tokenizer {
    /// Encode one chunk: start from its bytes and replay the merges in learned order.
    /// (tiktoken gets the same ids by always merging the adjacent pair of lowest rank.)
    fn encode_chunk(&self, chunk: &str, out: &mut Vec<u32>) {
        let mut ids: Vec<u32> = chunk.bytes().map(u32::from).collect();
        let mut unused_changes = Vec::new();
        while ids.len() >= 2 {
            let learned_first = ids
                .windows(2)
                .filter_map(|w| self.merge_ids.get(&(w[0], w[1])).map(|&id| (id, (w[0], w[1]))))
                .min();
            let Some((new_id, pair)) = learned_first else { break };
            merge_pair(&mut ids, pair, new_id, &mut unused_changes);
            unused_changes.clear();
        }
        out.extend_from_slice(&ids);
    }
}

/// Stream `iterator` in batches and count the distinct chunks of all its texts.
///
/// Python objects can only be touched while holding the GIL, so each batch is first
/// copied into Rust strings; splitting and counting then run on all cores without it.
fn count_chunks(py: Python<'_>, iterator: &PyAny, splitter: &Splitter, buffer_size: usize) -> PyResult<AHashMap<String, u64>> {
    let iterator = PyIterator::from_object(py, iterator)?;
    let mut totals = AHashMap::new();
    let mut batch = Vec::with_capacity(buffer_size);
    let mut items_seen = 0;
    loop {
        batch.clear();
        let exhausted = fill_batch(iterator, &mut batch, buffer_size, &mut items_seen)?;
        py.allow_threads(|| {
            add_batch(&mut totals, count_batch(&batch, splitter)?);
            Ok::<(), String>(())
        })
        .map_err(PyRuntimeError::new_err::<String>)?;
        if exhausted {
            return Ok(totals);
        }
    }
}

/// Copy up to `size` texts from the iterator into `batch`; true when it is exhausted.
fn fill_batch(iterator: &PyIterator, batch: &mut Vec<String>, size: usize, items_seen: &mut usize) -> PyResult<bool> {
    // pyo3 0.17 keeps every object we receive alive until its GIL pool ends; a pool per
    // batch frees each batch's Python strings (we keep only our copies), so memory stays
    // bounded by one batch however long the iterator is.
    let pool = unsafe { iterator.py().new_pool() };
    let _py = pool.python();
    let mut items = iterator;
    while batch.len() < size {
        let Some(item) = items.next() else { return Ok(true) };
        let item = item?;
        let text = item.downcast::<PyString>().map_err(|_| {
            let type_name = item.get_type().name().unwrap_or("?");
            PyTypeError::new_err(format!(
                "train_from_iterator: item {} of the iterator is a {type_name}, expected str",
                *items_seen
            ))
        })?;
        batch.push(text.to_str()?.to_owned());
        *items_seen += 1;
    }
    Ok(false)
}

/// Turn distinct chunks into training words: their bytes as token ids, with counts.
/// Single-byte chunks are dropped: they hold no pair, so they can never be merged.
fn into_words(chunk_counts: AHashMap<String, u64>) -> (Vec<Vec<u32>>, Vec<i64>) {
    chunk_counts
        .into_iter()
        .filter(|(chunk, _)| chunk.len() >= 2)
        .map(|(chunk, count)| (chunk.bytes().map(u32::from).collect::<Vec<u32>>(), count as i64))
        .unzip()
}

/// Split `text` into the chunks BPE trains on (pattern=None: DEFAULT_PATTERN).
#[pyfunction(pattern = "None")]
#[pyo3(text_signature = "(text, pattern=None)")]
fn split_text(text: &str, pattern: Option<&str>) -> PyResult<Vec<String>> {
    let splitter = Splitter::new(pattern.unwrap_or(DEFAULT_PATTERN)).map_err(PyValueError::new_err)?;
    let mut chunks = Vec::new();
    splitter.for_each_chunk(text, |chunk| chunks.push(chunk.to_string())).map_err(PyRuntimeError::new_err)?;
    Ok(chunks)
}

/// Byte-level BPE training in Rust: parallel chunk counting, incremental merges.
#[pymodule]
fn rustbpe(_py: Python<'_>, m: &PyModule) -> PyResult<()> {
    m.add_class::<Tokenizer>()?;
    m.add_function(wrap_pyfunction!(split_text, m)?)?;
    m.add("DEFAULT_PATTERN", DEFAULT_PATTERN)?;
    Ok(())
}
