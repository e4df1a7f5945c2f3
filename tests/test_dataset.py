"""Shards on disk: the split convention, rank striding, resume positions, clear errors."""
import os

import pytest

from nanochat import dataset


@pytest.fixture
def shards(base_dir, data_pack):
    return dataset.download_shards(3)


def test_no_shards_says_how_to_download(base_dir):
    with pytest.raises(FileNotFoundError, match="python -m nanochat.dataset -n"):
        dataset.list_parquet_files()


def test_ranks_read_disjoint_row_groups_that_cover_the_split(shards):
    def take(rank, world):
        return dict(dataset.iter_row_groups("val", rank, world))

    alone = take(0, 1)
    r0, r1 = take(0, 2), take(1, 2)
    assert set(r0).isdisjoint(r1) and set(r0) | set(r1) == set(alone)
    assert all(r0[i] == alone[i] for i in r0) and all(r1[i] == alone[i] for i in r1)


def test_train_loops_and_resumes_from_an_index(shards):
    it = dataset.iter_row_groups("train", rank=1, world_size=2)
    first = [next(it) for _ in range(12)]  # more than one epoch: train repeats forever
    indices = [i for i, _ in first]
    assert indices == list(range(1, 24, 2))
    resumed = dataset.iter_row_groups("train", rank=1, world_size=2, start=indices[5] + 1)
    assert [next(resumed) for _ in range(6)] == first[6:]


def test_a_corrupt_shard_is_named(shards):
    with open(shards[0], "r+b") as f:
        f.write(b"garbage!")
        f.seek(-8, 2)
        f.write(b"garbage!")
    with pytest.raises(RuntimeError, match="shard_00000.parquet"):
        next(dataset.iter_row_groups("train"))


def test_the_validation_shard_is_named_out_loud(shards):
    assert dataset.describe_val_shard().startswith("shard_00002.parquet, the last of the 3 shards on disk")


def test_the_download_command_fails_in_one_message(base_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a mirror that is not running
    monkeypatch.setattr("sys.argv", ["nanochat.dataset", "-n", "2"])
    assert dataset.main() == 2
    err = capsys.readouterr().err
    assert err.count("nanochat.dataset: error:") == 1 and "is the mirror running?" in err and "Traceback" not in err


def _open_shard_files(shards: list[str]) -> int:
    """How many of these shard files this process has open right now (Linux: /proc/self/fd)."""
    wanted = {os.path.realpath(path) for path in shards}
    fds = "/proc/self/fd"
    names = []
    for fd in os.listdir(fds):
        try:
            names.append(os.readlink(os.path.join(fds, fd)))
        except OSError:  # closed while we looked
            pass
    return sum(name in wanted for name in names)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files through /proc")
def test_only_the_shard_being_read_is_open(shards):
    it = dataset.iter_row_groups("train")
    groups_per_shard = dataset.open_shard(shards[0]).num_row_groups
    open_counts = []
    for _ in range(2 * groups_per_shard + 1):  # through both train shards and back to the first
        next(it)
        open_counts.append(_open_shard_files(shards))
    assert max(open_counts) == 1, open_counts
    it.close()
    assert _open_shard_files(shards) == 0
