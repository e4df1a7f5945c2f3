"""Test-session setup shared by unit tests and notebooks (nbval).

Before anything is collected: serve the course data pack (../shared/data, or
$NANOCHAT_DATA_PACK) on 127.0.0.1 with nanochat.mirror and point the download variables
at it, and give the session a fresh NANOCHAT_BASE_DIR. Notebook kernels inherit this
environment, so the notebooks' real download code runs against the mirror.
"""
import os
import shutil
import tempfile

import pytest

REPO = os.path.dirname(os.path.abspath(__file__))
DATA_PACK = os.environ.get("NANOCHAT_DATA_PACK", os.path.join(REPO, "..", "shared", "data"))
_session = {}
_notebooks_run = {}  # NN_name -> True when every cell nbval ran passed


def pytest_configure(config):
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_MININTERVAL", "5")
    if "NANOCHAT_BASE_DIR" not in os.environ:
        _session["base_dir"] = tempfile.mkdtemp(prefix="nanochat-test-")
        os.environ["NANOCHAT_BASE_DIR"] = _session["base_dir"]
    if os.path.isdir(os.path.join(DATA_PACK, "pretrain")) and "HF_ENDPOINT" not in os.environ:
        from nanochat.mirror import start_mirror

        server, env = start_mirror(DATA_PACK)
        _session["server"] = server
        os.environ.update(env)


def pytest_unconfigure(config):
    if "server" in _session:
        _session["server"].shutdown()
    if "base_dir" in _session:
        shutil.rmtree(_session["base_dir"], ignore_errors=True)


def pytest_collection_modifyitems(session, config, items):
    """The checks of what the notebooks wrote (tests/test_after_notebooks.py) run after the notebooks."""
    last = [item for item in items if item.nodeid.startswith("tests/test_after_notebooks.py")]
    items[:] = [item for item in items if item not in last] + last


def pytest_runtest_logreport(report):
    """Remember which notebooks nbval ran in this session, and whether all their cells passed."""
    path, sep, _ = report.nodeid.partition(".ipynb::")
    if sep and report.when == "call":
        name = os.path.basename(path)
        _notebooks_run[name] = _notebooks_run.get(name, True) and report.passed


@pytest.fixture(scope="session")
def notebooks_run() -> dict:
    """{NN_name: all cells passed} for the notebooks nbval has run so far in this session."""
    return _notebooks_run


@pytest.fixture(scope="session")
def data_pack() -> str:
    """The course data pack folder; tests that read it directly skip without it."""
    if not os.path.isdir(os.path.join(DATA_PACK, "pretrain")):
        pytest.skip(f"no data pack at {DATA_PACK} (set NANOCHAT_DATA_PACK)")
    return os.path.abspath(DATA_PACK)


@pytest.fixture
def base_dir(tmp_path, monkeypatch) -> str:
    """A private, empty NANOCHAT_BASE_DIR for one test."""
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path / "base"))
    return str(tmp_path / "base")
