"""The pretraining data: FineWeb-EDU parquet shards. List, download, iterate by rank.

The dataset is a Hugging Face repo of parquet shards, `shard_00000.parquet` ..., each
with a `text` column, stored in row groups of ~1024 documents. Shards land in
`base_dir/base_data/`. By nanochat's convention the LAST shard on disk is validation,
everything before it is training.

    python -m nanochat.dataset -n 8      # the first 8 shards (7 train + 1 val)
"""
import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pyarrow.parquet as pq

from nanochat import hub
from nanochat.common import pretrain_data_dir, tqdm

MAX_SHARD = 1822  # the public dataset has shard_00000 .. shard_01822


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def shard_url(index: int) -> str:
    return hub.hf_dataset_url(hub.PRETRAIN_REPO, shard_name(index))


def check_parquet(path: str) -> None:
    """Raise if path is not a readable parquet file with a `text` column."""
    schema = pq.ParquetFile(path).schema_arrow
    if "text" not in schema.names:
        raise ValueError(f"{path} has no 'text' column (columns: {schema.names})")


def shard_is_whole(path: str) -> bool:
    """True if a readable shard is on disk; a truncated or corrupt one is deleted (and said so) to be fetched again."""
    if not os.path.exists(path):
        return False
    try:
        check_parquet(path)  # reads the footer: a truncated file has none
        return True
    except Exception as e:
        print(f"{path} is broken ({type(e).__name__}: {e}); downloading it again")
        os.remove(path)
        return False


def download_shards(num_shards: int, num_workers: int = 4) -> list[str]:
    """Download shards 0..num_shards-1 (skipping whole ones on disk), a few at a time."""
    if not 2 <= num_shards <= MAX_SHARD + 1:
        raise ValueError(f"num_shards must be between 2 (one train, one val) and {MAX_SHARD + 1}, got {num_shards}")
    paths = [os.path.join(pretrain_data_dir(), shard_name(i)) for i in range(num_shards)]
    todo = [(i, p) for i, p in enumerate(paths) if not shard_is_whole(p)]
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        jobs = [pool.submit(hub.download, shard_url(i), p, validate=check_parquet) for i, p in todo]
        for job in tqdm(jobs, desc="shards", unit="shard", disable=len(jobs) < 2):
            job.result()
    return paths


def list_parquet_files(directory: str | None = None) -> list[str]:
    """All complete shards on disk, in order; a clear error when there are none."""
    directory = directory or pretrain_data_dir()
    files = sorted(f for f in os.listdir(directory) if f.endswith(".parquet")) if os.path.isdir(directory) else []
    if not files:
        raise FileNotFoundError(
            f"No pretraining shards in {directory}.\n"
            f"  Download some first: python -m nanochat.dataset -n 8   (or nanochat.dataset.download_shards(8))"
        )
    return [os.path.join(directory, f) for f in files]


def split_files(split: str, directory: str | None = None) -> list[str]:
    """train = every shard but the last, val = the last one."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    files = list_parquet_files(directory)
    if len(files) < 2:
        raise FileNotFoundError(f"Need at least 2 shards (train + val) in {os.path.dirname(files[0])}, found 1.")
    return files[:-1] if split == "train" else files[-1:]


def describe_val_shard(directory: str | None = None) -> str:
    """Which shard validates, said out loud: it is the last on disk, so downloading more shards changes it."""
    files = list_parquet_files(directory)
    return (f"{os.path.basename(files[-1])}, the last of the {len(files)} shards on disk (val bpb is comparable "
            f"only between runs that validate on the same shard)")


def open_shard(path: str) -> pq.ParquetFile:
    """Open a shard, naming it when it is corrupt."""
    try:
        return pq.ParquetFile(path)
    except Exception as e:
        raise RuntimeError(f"Corrupt or unreadable shard {path}: {e}\n  Delete it and download it again.") from e


def count_row_groups(path: str) -> int:
    """How many row groups a shard has: read from its footer, and the file closed again."""
    with open_shard(path) as shard:
        return shard.num_row_groups


def iter_row_groups(
    split: str, rank: int = 0, world_size: int = 1, start: int = 0, directory: str | None = None
) -> Iterator[tuple[int, list[str]]]:
    """Yield (row_group_index, texts) for this rank: train loops forever, val runs once.

    Row groups are numbered across the split's shards, and on across epochs
    (index = epoch * num_row_groups + position). Rank r takes the indices with
    index % world_size == r, so ranks read disjoint documents and together read all of
    them. `start` is the first index to consider: how a loader resumes.

    Only the shard being read is open: a d32 run has ~800 shards, and one open file each
    (times the ranks, beside NCCL's and the compile workers' own) can pass the usual limit
    of 1024 open files per process.
    """
    paths = split_files(split, directory)
    row_groups = [(path, rg) for path in paths for rg in range(count_row_groups(path))]
    n = len(row_groups)
    index = start + (rank - start) % world_size  # the first index >= start that is ours
    open_path, shard = None, None
    try:
        while split == "train" or index < n:
            path, rg = row_groups[index % n]
            if path != open_path:
                if shard is not None:
                    shard.close()
                open_path, shard = path, open_shard(path)
            yield index, shard.read_row_group(rg, columns=["text"]).column("text").to_pylist()
            index += world_size
    finally:
        if shard is not None:
            shard.close()


def main():
    parser = argparse.ArgumentParser(description="Download FineWeb-EDU pretraining shards.")
    parser.add_argument("-n", "--num-shards", type=int, default=8, help="how many (the last is validation)")
    parser.add_argument("-w", "--workers", type=int, default=4, help="parallel downloads")
    args = parser.parse_args()
    try:
        paths = download_shards(args.num_shards, args.workers)
    except (hub.DownloadError, ValueError) as e:  # the message says what to do; a traceback would bury it
        print(f"nanochat.dataset: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(paths)} shards in {pretrain_data_dir()} ({len(paths) - 1} train + 1 val)")
    print(f"validation shard: {describe_val_shard()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
