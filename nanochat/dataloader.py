"""The data loader: documents -> tokens -> (inputs, targets) batches, for every training stage.

    loader = build_train_loader(tokenizer, B=8, T=512, device="cuda", rank=r, world_size=n)
    for inputs, targets in loader:       # int64 tensors of shape (B, T) on the device
        ...
        checkpoint["loader"] = loader.state_dict()   # a small dict; resume exactly from it

One packer, two sources, two policies. A source yields documents as (ids, mask): the
pretraining shards (DocumentStream: every token supervised, mask None) or a task's
conversations rendered by the tokenizer (ConversationStream: mask 1 only on what the
assistant writes). Targets are -1 wherever the mask is 0 or the row is padding, so the
loss (ignore_index=-1) never trains the model to write the user's words, the tool's
output or padding. The policy says what to do when no document fits the rest of a row:
"crop" (pretraining, midtraining) cuts the shortest document to fill it, "pad" (SFT)
pads it, so no conversation is ever split, and drops (and counts) a conversation longer
than a whole row instead of cropping it.

Where documents come from. `nanochat.dataset.iter_row_groups` hands each rank every
world_size-th row group (~1024 documents) of the split, so ranks read disjoint documents
and together read all of them. A document's identity is (row_group, position): the row
group's global index (which keeps counting up across epochs) and its place inside it.
Documents are tokenized a chunk at a time with several threads, each one prefixed with
<|bos|>.

How tokens become rows. A batch is B rows of T+1 tokens: inputs = row[:-1] and
targets = row[1:] (predict the next token). Two ways to fill a row:

  streaming (StreamingLoader): concatenate every document into one long token stream and
      chop it into rows. Nothing is wasted, but most rows begin in the middle of a
      document, so the model is asked to predict text whose beginning it cannot see.

  best-fit (BestFitLoader, the one we train with): every row starts with a document's
      <|bos|>. Keep a buffer of ~1000 tokenized documents sorted by length; to fill the
      space left in a row, place the LARGEST document that fits, again and again. When
      nothing fits any more (every buffered document is longer than the gap), crop the
      SHORTEST document to fill the gap exactly and throw its tail away. Rows are 100%
      full (no padding); the price is the cropped tokens, which we count.

Why crop the shortest: when nothing fits, every document is longer than the gap, and the
shortest is the one whose crop throws away the fewest tokens; the long ones stay in the
buffer to fill whole rows later. Why throw the tail away rather than keep it for later:
the tail does not begin with <|bos|>, so wherever it went it would be text without its
beginning, which is exactly what best-fit exists to avoid. A document longer than a whole
row (T+1 tokens) is cropped to T+1 when it enters the buffer: it then fills one row on
its own, from its beginning.

Exact resume. The loader is a deterministic function of the documents it reads, so its
whole state is *which documents it holds*: the position of the next document to read,
plus the ids of the documents sitting in the buffer (best-fit) or the one document being
chopped and how far into it we are (streaming). `state_dict()` returns exactly that, a
few KB of ints that fit in a checkpoint's JSON. A fresh loader given that state re-reads
those few documents, tokenizes them again (tokenizing is deterministic) and continues
with exactly the batches the uninterrupted run would have produced. Ties in the buffer
are broken by document id, never by arrival order, so the rebuilt buffer behaves exactly
like the lost one.
"""
import bisect
import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import pyarrow as pa
import torch

from nanochat.common import get_rank, get_world_size
from nanochat.dataset import count_row_groups, iter_row_groups, split_files

DocId = tuple[int, int]  # (global row-group index, position of the document inside it)
STATE_VERSION = 1


class Piece(NamedTuple):
    """One stretch of one document inside a row: the unit the pictures in notebook 02 draw."""
    doc: DocId
    start: int        # token offset inside the document (0 = begins with <|bos|>)
    length: int       # tokens placed in the row
    doc_length: int   # the document's full length in tokens


@dataclass
class PackingStats:
    """Running counts: how full the rows are and how much text the packing threw away."""
    batches: int = 0
    rows: int = 0
    documents: int = 0          # documents whose start (<|bos|>) went into a row
    row_tokens: int = 0         # slots in the rows: rows * (T+1)
    doc_tokens: int = 0         # slots holding document tokens (the rest would be padding)
    cropped_tokens: int = 0     # document tokens thrown away by crops, of which
    overlong_tokens: int = 0    #   the tails of documents longer than a whole row
    rows_mid_document: int = 0  # rows whose first token is not a document's <|bos|>
    dropped: int = 0            # documents longer than a row, left out whole ("pad" policy)
    dropped_tokens: int = 0

    @property
    def padding_fraction(self) -> float:
        """Of the row slots, the fraction that holds padding (no loss there)."""
        return 1 - self.utilisation

    @property
    def utilisation(self) -> float:
        return self.doc_tokens / max(self.row_tokens, 1)

    @property
    def crop_fraction(self) -> float:
        """Of the document tokens the loader took in, the fraction that never reached a row."""
        return self.cropped_tokens / max(self.doc_tokens + self.cropped_tokens, 1)

    @property
    def overlong_fraction(self) -> float:
        """The part of crop_fraction due to documents longer than a row (only a longer T helps)."""
        return self.overlong_tokens / max(self.doc_tokens + self.cropped_tokens, 1)


class _OutOfDocuments(Exception):
    """A finite split (val) ran dry before the batch was full."""


# ---- documents: read, tokenize, remember where we are


class DocumentStream:
    """This rank's tokenized documents in reading order, starting at any (row_group, position).

    `position` is always the id of the next document next() will return, so saving it and
    starting a new stream there continues exactly. A position past the end of a row group
    simply means "the next row group of this rank".
    """

    def __init__(self, tokenizer, split: str, rank: int, world_size: int, start: DocId = (0, 0),
                 num_threads: int = 4, chunk_size: int = 128):
        self.tokenizer, self.split, self.rank, self.world_size = tokenizer, split, rank, world_size
        self.num_threads, self.chunk_size = num_threads, chunk_size
        self.bos = tokenizer.get_bos_token_id()
        self.position = tuple(start)
        self._documents = self._generate(self.position)

    def _generate(self, start: DocId):
        """Yield (doc_id, ids): read row groups from start, tokenize chunk_size documents per call."""
        start_group, start_pos = start
        for group, texts in _read_row_groups(self.split, self.rank, self.world_size, start_group):
            first = start_pos if group == start_group else 0
            for lo in range(first, len(texts), self.chunk_size):
                # many documents per call, so the threads have work and the call overhead is paid once
                chunk = texts[lo:lo + self.chunk_size]
                for k, ids in enumerate(self.tokenizer.encode(chunk, prepend=self.bos, num_threads=self.num_threads)):
                    yield (group, lo + k), ids

    def __iter__(self):
        return self

    def __next__(self) -> tuple[DocId, list[int], None]:
        doc_id, ids = next(self._documents)
        self.position = (doc_id[0], doc_id[1] + 1)
        return doc_id, ids, None  # mask None: every token of a web document is supervised

    def fetch(self, doc_ids: list[DocId]) -> dict[DocId, tuple[list[int], None]]:
        """Tokenize specific documents again (a resume rebuilding its buffer); one read per row group."""
        by_group: dict[int, list[int]] = {}
        for group, pos in doc_ids:
            by_group.setdefault(group, []).append(pos)
        found = {}
        for group, positions in sorted(by_group.items()):
            read_group, texts = next(_read_row_groups(self.split, self.rank, self.world_size, group), (None, []))
            if read_group != group or max(positions) >= len(texts):
                raise ValueError(f"loader state names documents {group}:{max(positions)} that rank {self.rank} of "
                                 f"{self.world_size} cannot read from the {self.split} split: were the shards changed?")
            ids = self.tokenizer.encode([texts[p] for p in positions], prepend=self.bos, num_threads=self.num_threads)
            found.update({(group, p): (i, None) for p, i in zip(positions, ids)})
        return found


def _read_row_groups(split: str, rank: int, world_size: int, start: int):
    """iter_row_groups, but a shard that fails while being read is named in the error."""
    rows = iter_row_groups(split, rank, world_size, start)
    expected = start + (rank - start) % world_size  # the index iter_row_groups will read next
    while True:
        try:
            group, texts = next(rows)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:  # a damaged page: bad compression, a broken header
            path = _shard_holding(split, expected)
            raise RuntimeError(f"Corrupt shard {path} (row group {expected} of the {split} split): {e}\n"
                               f"  Delete it and download it again: python -m nanochat.dataset -n <num_shards>") from e
        yield group, texts
        expected = group + world_size


def _shard_holding(split: str, index: int) -> str:
    """Which shard file holds global row group `index` of a split (row groups count on across epochs)."""
    counts = [(path, count_row_groups(path)) for path in split_files(split)]
    index %= sum(n for _, n in counts)
    for path, n in counts:
        if index < n:
            return path
        index -= n
    raise AssertionError("unreachable")


class ConversationStream:
    """This rank's conversations of a task, rendered to (ids, mask), from any position.

    A document id is (epoch, index into the task): rank r reads indices r, r+W, r+2W, ...;
    with loop=True (training) the task starts over when it is used up, one epoch after
    another, else (evaluation) the stream ends. Rendering is deterministic, so fetch() can
    rebuild any conversation from its id alone, which is how a resume refills its buffer.
    """

    def __init__(self, tokenizer, task, rank: int, world_size: int, start: DocId | None = None, loop: bool = True):
        if len(task) == 0:
            raise ValueError(f"the task {task!r} has no conversations")
        self.tokenizer, self.task, self.rank, self.world_size, self.loop = tokenizer, task, rank, world_size, loop
        self.position = tuple(start) if start is not None else (0, rank)

    def __iter__(self):
        return self

    def render(self, index: int) -> tuple[list[int], list[int]]:
        return self.tokenizer.render_conversation(self.task[index], max_tokens=10**9)

    def __next__(self) -> tuple[DocId, list[int], list[int]]:
        epoch, index = self.position
        if index >= len(self.task):
            if not self.loop or self.rank >= len(self.task):
                raise StopIteration
            epoch, index = epoch + 1, self.rank
        self.position = (epoch, index + self.world_size)
        return (epoch, index), *self.render(index)

    def fetch(self, doc_ids: list[DocId]) -> dict[DocId, tuple[list[int], list[int]]]:
        """Render specific conversations again (a resume rebuilding its buffer)."""
        return {tuple(doc_id): self.render(doc_id[1]) for doc_id in doc_ids}


# ---- the best-fit buffer


class DocumentBuffer:
    """Tokenized documents kept sorted by length, so "the largest that fits" is one bisect.

    keys is a sorted list of (length, row_group, position); ties in length are broken by
    document id, so the choice never depends on the order documents arrived in.
    """

    def __init__(self):
        self.keys: list[tuple[int, int, int]] = []
        self.docs: dict[DocId, tuple[list[int], list[int] | None, int]] = {}  # id -> (ids, mask, full length)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, doc_id: DocId, ids: list[int], full_length: int, mask: list[int] | None = None) -> None:
        bisect.insort(self.keys, (len(ids), *doc_id))
        self.docs[doc_id] = (ids, mask, full_length)

    def _pop(self, i: int) -> tuple[DocId, list[int], list[int] | None, int]:
        _, group, pos = self.keys.pop(i)
        ids, mask, full_length = self.docs.pop((group, pos))
        return (group, pos), ids, mask, full_length

    def pop_largest_fitting(self, space: int):
        """The longest document with length <= space, or None when every one is longer."""
        i = bisect.bisect_right(self.keys, (space, float("inf"), float("inf")))
        return self._pop(i - 1) if i > 0 else None

    def pop_shortest(self):
        """The shortest document: when nothing fits, cropping it throws away the fewest tokens."""
        return self._pop(0)


# ---- the loaders


class _Loader:
    """What both packings share: arguments, the source, batches as tensors, statistics, state.

    The source is the pretraining split `split` ("train" or "val") of the shards, or, when
    `task` is given, that task's conversations (loop: start over when used up).
    """
    kind = ""

    def __init__(self, tokenizer, B: int, T: int, device: str | torch.device = "cpu", split: str = "train",
                 rank: int | None = None, world_size: int | None = None, num_threads: int = 4,
                 max_batches: int | None = None, state: dict | None = None, task=None, loop: bool = True):
        rank = get_rank() if rank is None else rank
        world_size = get_world_size() if world_size is None else world_size
        if B < 1 or T < 1:
            raise ValueError(f"B and T must be positive, got B={B}, T={T}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if task is None:
            split_files(split)  # fail now, not at the first batch, when there are no shards
        self.tokenizer, self.B, self.T, self.task, self.loop = tokenizer, B, T, task, loop
        self.split = split if task is None else f"task {task.name} ({len(task)} conversations)"
        self.rank, self.world_size, self.num_threads, self.max_batches = rank, world_size, num_threads, max_batches
        self.row_len = T + 1  # inputs row[:-1], targets row[1:]
        self.device = torch.device(device)
        self.fingerprint = tokenizer.fingerprint()
        self.pad_id = tokenizer.get_bos_token_id()  # what fills a padded slot; its target is -1, so any id would do
        self.stats = PackingStats()
        self.layout: list[list[Piece]] = []  # the pieces of each row of the last batch
        self.batches_yielded = 0  # by this loader object (stats may have been restored or reset)
        self._held, self._state_before_held = None, None  # a batch packed ahead by prefetch()
        self.stream = self._make_stream(None)
        if state is not None:
            self.load_state_dict(state)

    def _make_stream(self, start: DocId | None):
        """The documents of this rank from `start` (None: the beginning)."""
        if self.task is not None:
            return ConversationStream(self.tokenizer, self.task, self.rank, self.world_size, start, self.loop)
        return DocumentStream(self.tokenizer, self.split, self.rank, self.world_size, start=start or (0, 0),
                              num_threads=self.num_threads)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._held is not None:
            batch, self._held = self._held, None
            return batch
        return self._next_batch()

    def prefetch(self) -> None:
        """Pack the next batch now, so the next next() returns it at once.

        Call it right after backward(): on a GPU, backward's kernels are only queued when it
        returns, so the CPU packs and copies the next batch while the GPU still computes,
        instead of after the step, with the GPU idle (a few % of a speedrun). state_dict()
        leaves the held batch out, so a checkpoint taken meanwhile resumes with that batch.
        (`stats` and `layout` already count it.)
        """
        if self._held is None:
            state = self.state_dict()
            try:
                self._held = self._next_batch()
            except StopIteration:  # a finite loader ran out: next() will say so
                return
            self._state_before_held = state

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pack B rows and put them on the device."""
        if self.max_batches is not None and self.batches_yielded >= self.max_batches:
            raise StopIteration
        try:
            rows, masks, layout = zip(*(self._pack_row() for _ in range(self.B)))
        except _OutOfDocuments:
            if self.batches_yielded == 0:
                raise ValueError(
                    f"The {self.split} split has too few tokens for rank {self.rank} of {self.world_size} to fill even "
                    f"one batch of B={self.B} rows x T+1={self.row_len} tokens. Lower B or T, or download more shards."
                ) from None
            raise StopIteration from None
        self.layout = list(layout)
        self._count(self.layout)
        self.batches_yielded += 1
        return self._to_device(rows, masks)

    def _count(self, layout: list[list[Piece]]) -> None:
        s = self.stats
        s.batches += 1
        s.rows += len(layout)
        s.row_tokens += len(layout) * self.row_len
        s.doc_tokens += sum(piece.length for row in layout for piece in row)
        s.documents += sum(piece.start == 0 for row in layout for piece in row)
        s.rows_mid_document += sum(row[0].start != 0 for row in layout)

    def _to_device(self, rows, masks) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T+1) ids -> inputs, targets (B, T) int64 on the device; targets -1 where nothing is to be learned.

        targets[i] is the token at row position i+1, so it is ignored when mask[i+1] is 0:
        the user's words, the tool's output, padding. On CUDA the CPU tensors are in pinned
        (page-locked) memory, so the copies to the GPU run asynchronously (non_blocking)
        while the GPU is still busy with the last step.
        """
        batch = torch.tensor(rows, dtype=torch.long)
        targets_cpu = batch[:, 1:].clone()
        if any(mask is not None for mask in masks):
            full = torch.tensor([mask if mask is not None else [1] * self.row_len for mask in masks], dtype=torch.bool)
            targets_cpu[~full[:, 1:]] = -1
        pin = self.device.type == "cuda"
        inputs = torch.empty(self.B, self.T, dtype=torch.long, pin_memory=pin).copy_(batch[:, :-1])
        targets = torch.empty(self.B, self.T, dtype=torch.long, pin_memory=pin).copy_(targets_cpu)
        return inputs.to(self.device, non_blocking=pin), targets.to(self.device, non_blocking=pin)

    def _next_document(self) -> tuple[DocId, list[int], list[int] | None] | None:
        """The next (doc_id, ids, mask), or None when a finite source has run out."""
        try:
            return next(self.stream)
        except StopIteration:
            return None

    # ---- state

    def state_dict(self) -> dict:
        """Everything needed to continue exactly after the last batch next() returned: a small dict of ints."""
        if self._held is not None:
            return self._state_before_held
        return {
            "version": STATE_VERSION, "kind": self.kind, "split": self.split,
            "rank": self.rank, "world_size": self.world_size, "tokenizer": self.fingerprint,
            "B": self.B, "T": self.T, "next_document": list(self.stream.position),
            "stats": asdict(self.stats), **self._packing_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a state_dict(); refuse one made for another rank layout, source, packing or tokenizer."""
        mine = self.state_dict()
        for key in ("version", "kind", "split", "rank", "world_size", "tokenizer"):
            if state.get(key) != mine[key]:
                raise ValueError(
                    f"This loader state was made for {key}={state.get(key)!r}, "
                    f"but this loader has {key}={mine[key]!r}. "
                    f"A state belongs to one rank of one world size (save one per rank, resume with the same number "
                    f"of ranks), one split, one packing and one tokenizer."
                )
        changed = [f"{key} {state[key]} -> {mine[key]}" for key in ("B", "T") if state[key] != mine[key]]
        if changed:
            warnings.warn(f"resuming with {', '.join(changed)}: the same documents continue, but the batches will "
                          f"differ from the run that saved this state")
        self.stream = self._make_stream(tuple(state["next_document"]))
        self.stats = PackingStats(**state["stats"])
        self._held = None
        self._load_packing_state(state)

    def _pack_row(self) -> tuple[list[int], list[int] | None, list[Piece]]:
        raise NotImplementedError

    def _packing_state(self) -> dict:
        raise NotImplementedError

    def _load_packing_state(self, state: dict) -> None:
        raise NotImplementedError


POLICIES = ("crop", "pad")


class BestFitLoader(_Loader):
    """Rows that each start at a document's <|bos|>, filled by best-fit from a document buffer.

    buffer_size: documents kept to choose from. More choice means fewer crops; the
    buffer is topped up to this size before every placement.
    policy: what happens when no buffered document fits the rest of a row. "crop" cuts the
    shortest one to fill the row exactly (rows 100% full); "pad" pads the row instead and
    leaves out (and counts, stats.dropped) any document longer than a whole row, so no
    document is ever split: what SFT wants, where every row must look like test time.

    A fresh buffer holds hundreds of long documents, and largest-first uses them first,
    one cropped document per row; the statistics settle once the buffer has turned over
    (about buffer_size documents placed).
    """
    kind = "bestfit"

    def __init__(self, tokenizer, B: int, T: int, device="cpu", buffer_size: int = 1000, policy: str = "crop",
                 **kwargs):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.buffer_size, self.policy = buffer_size, policy
        self.buffer = DocumentBuffer()
        super().__init__(tokenizer, B, T, device, **kwargs)

    def _admit(self, doc_id: DocId, ids: list[int], mask: list[int] | None) -> None:
        """Put a document in the buffer. One longer than a whole row keeps only its first T+1 tokens
        ("crop": it then fills one row on its own), or stays out whole ("pad")."""
        if self.policy == "pad" and len(ids) > self.row_len:
            self.stats.dropped += 1
            self.stats.dropped_tokens += len(ids)
            return
        self.buffer.add(doc_id, ids[:self.row_len], len(ids), None if mask is None else mask[:self.row_len])

    def _refill(self) -> None:
        while len(self.buffer) < self.buffer_size and (doc := self._next_document()) is not None:
            self._admit(*doc)

    def _pack_row(self) -> tuple[list[int], list[int] | None, list[Piece]]:
        """One row of exactly T+1 tokens: largest-that-fits until nothing fits, then crop the shortest (or pad)."""
        row, mask, pieces = [], [], []
        while len(row) < self.row_len:
            self._refill()
            space = self.row_len - len(row)
            if not self.buffer:
                if self.policy == "pad" and row:  # a finite source ran dry: pad out its last row
                    break
                raise _OutOfDocuments
            found = self.buffer.pop_largest_fitting(space)
            if found is None and self.policy == "pad":
                break
            doc_id, ids, doc_mask, full_length = found or self.buffer.pop_shortest()
            placed = ids[:space]  # shorter than ids only when nothing fitted
            self.stats.cropped_tokens += full_length - len(placed)
            self.stats.overlong_tokens += full_length - len(ids)
            row.extend(placed)
            mask.extend([1] * len(placed) if doc_mask is None else doc_mask[:space])
            pieces.append(Piece(doc_id, 0, len(placed), full_length))
        padding = self.row_len - len(row)
        row.extend([self.pad_id] * padding)
        mask.extend([0] * padding)
        supervised_everywhere = padding == 0 and all(mask)
        return row, None if supervised_everywhere else mask, pieces

    def _packing_state(self) -> dict:
        """The buffer as [[group, [positions...]], ...]: ids only, the tokens are recomputed."""
        by_group: dict[int, list[int]] = {}
        for _, group, pos in self.buffer.keys:
            by_group.setdefault(group, []).append(pos)
        return {"buffer_size": self.buffer_size, "policy": self.policy,
                "buffer": [[g, sorted(p)] for g, p in sorted(by_group.items())]}

    def _load_packing_state(self, state: dict) -> None:
        if state.get("policy", "crop") != self.policy:
            raise ValueError(f"this loader state was made with policy {state.get('policy')!r}, this loader has "
                             f"{self.policy!r}: the rows would differ from the run that saved it")
        if state["buffer_size"] != self.buffer_size:
            warnings.warn(f"resuming with buffer_size {state['buffer_size']} -> {self.buffer_size}: "
                          f"batches will differ from the run that saved this state")
        doc_ids = [(group, pos) for group, positions in state["buffer"] for pos in positions]
        self.buffer = DocumentBuffer()
        for doc_id, (ids, mask) in self.stream.fetch(doc_ids).items():
            self.buffer.add(doc_id, ids[:self.row_len], len(ids), None if mask is None else mask[:self.row_len])


class StreamingLoader(_Loader):
    """Concatenate-and-chop: documents end to end, cut into rows wherever T+1 tokens fall.

    Kept to compare with best-fit: no token is ever thrown away, but a row usually begins
    in the middle of a document.
    """
    kind = "streaming"

    def __init__(self, tokenizer, B: int, T: int, device="cpu", **kwargs):
        self.current: tuple[DocId, list[int]] | None = None  # the document being chopped
        self.offset = 0  # how many of its tokens are already in rows
        super().__init__(tokenizer, B, T, device, **kwargs)

    def _pack_row(self) -> tuple[list[int], None, list[Piece]]:
        """One row of exactly T+1 tokens: the next T+1 of the stream, wherever documents begin."""
        row, pieces = [], []
        while len(row) < self.row_len:
            if self.current is None or self.offset == len(self.current[1]):
                document, self.offset = self._next_document(), 0
                if document is None:
                    raise _OutOfDocuments
                self.current = document[:2]
            doc_id, ids = self.current
            take = ids[self.offset:self.offset + self.row_len - len(row)]
            row.extend(take)
            pieces.append(Piece(doc_id, self.offset, len(take), len(ids)))
            self.offset += len(take)
        return row, None, pieces

    def _packing_state(self) -> dict:
        """The document being chopped and how far into it we are (None between documents)."""
        return {"current": None if self.current is None else [*self.current[0], self.offset]}

    def _load_packing_state(self, state: dict) -> None:
        self.current, self.offset = None, 0
        if state["current"] is not None:
            group, pos, offset = state["current"]
            self.current = ((group, pos), self.stream.fetch([(group, pos)])[(group, pos)][0])
            self.offset = offset


def build_train_loader(tokenizer, B: int, T: int, device="cpu", rank: int | None = None, world_size: int | None = None,
                       state: dict | None = None, **kwargs) -> BestFitLoader:
    """The pretraining loader: best-fit over the train split, endless (epochs roll over), resumable."""
    return BestFitLoader(tokenizer, B, T, device, split="train", rank=rank, world_size=world_size, state=state,
                         **kwargs)


def build_val_loader(tokenizer, B: int, T: int, device="cpu", rank: int | None = None, world_size: int | None = None,
                     max_batches: int | None = None, **kwargs) -> BestFitLoader:
    """The evaluation loader: best-fit over the val shard, once, identical on every call.

    It stops when this rank's share of the val shard cannot fill another batch, or after
    max_batches. Ranks may get different numbers of batches, so sum the loss over batches
    and all-reduce once at the end. Build a new one for every evaluation.
    """
    return BestFitLoader(tokenizer, B, T, device, split="val", rank=rank, world_size=world_size,
                         max_batches=max_batches, **kwargs)


def build_conversation_loader(tokenizer, task, B: int, T: int, device="cpu", policy: str = "crop", loop: bool = True,
                              rank: int | None = None, world_size: int | None = None, state: dict | None = None,
                              buffer_size: int = 100, max_batches: int | None = None) -> BestFitLoader:
    """The chat stages' loader: a task's conversations (often a TaskMixture), best-fit packed.

    policy "crop" packs rows full (midtraining: a cropped conversation's tail is lost),
    "pad" pads them so no conversation is split (SFT: rows look like test time, too-long
    ones are dropped and counted). loop=False for a held-out set: one pass, then stop.
    """
    return BestFitLoader(tokenizer, B, T, device, task=task, loop=loop, policy=policy, rank=rank,
                         world_size=world_size, state=state, buffer_size=buffer_size, max_batches=max_batches)
