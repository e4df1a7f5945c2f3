"""Base dirs for tests that run a stage: one built once per module, fresh ones that share its inputs."""
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def using_base_dir(path: Path):
    """Point NANOCHAT_BASE_DIR at path for a block (module-scoped fixtures cannot use monkeypatch)."""
    old = os.environ.get("NANOCHAT_BASE_DIR")
    os.environ["NANOCHAT_BASE_DIR"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            del os.environ["NANOCHAT_BASE_DIR"]
        else:
            os.environ["NANOCHAT_BASE_DIR"] = old


def fresh_base_dir(inputs: Path, path: Path, monkeypatch, shared: tuple[str, ...]) -> Path:
    """A base dir whose `shared` entries are symlinks into inputs; what a stage writes stays its own."""
    for name in shared:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).symlink_to(inputs / name)
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(path))
    return path
