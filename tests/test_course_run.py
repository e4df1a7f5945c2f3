"""The whole course as `nanochat run --profile tiny` runs it, killed twice with SIGKILL and continued.

A fresh base dir, the real runner in a subprocess (papermill kernels and all). The first kill
lands in pretraining once a checkpoint exists, the second in the evaluation stage; each time the
same command again must skip what is complete, continue pretraining from its checkpoint, and
finish with a complete report card. This is also the one test that runs every stage through the
pipeline (nbval runs the same notebooks, one by one).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanochat.checkpoint import complete_steps
from nanochat.stages import NOTEBOOKS_DIR
from test_pipeline import leftover_kernels

STAGES = sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
COMMAND = [sys.executable, "-m", "nanochat.cli", "run", "--profile", "tiny", "-p", "05_pretrain.save_every=10"]


def start(env, log, cwd):
    """The runner in its own process group, as a user's terminal would start it (report.md lands in cwd)."""
    return subprocess.Popen(COMMAND, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)


def wait_for(condition, proc, timeout=600, what=""):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def kill(proc):
    """SIGKILL the runner's process group: no cleanup code of ours runs."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def no_kernels_left(tag, within=15.0):
    """A kernel whose runner died must not keep training: it would race the rerun for the same files."""
    deadline = time.time() + within
    while leftover_kernels(tag) and time.time() < deadline:
        time.sleep(0.5)
    return not leftover_kernels(tag)


def notebook_text(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_the_tiny_course_killed_twice_continues_to_a_complete_report(tmp_path):
    base = tmp_path / "base"
    tag = f"course-{os.getpid()}"
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base), NANOCHAT_TEST_TAG=tag)
    run_dir, checkpoints = base / "runs" / "tiny", base / "checkpoints" / "base" / "d2"
    with open(tmp_path / "run.log", "w") as log:
        # 1. killed in pretraining, after its checkpoint at step 10 or later
        proc = start(env, log, tmp_path)
        wait_for(lambda: checkpoints.is_dir() and any(s >= 10 for s in complete_steps(str(checkpoints))), proc,
                 what="the first pretraining checkpoint")
        kill(proc)
        assert not (run_dir / "05_pretrain.done").exists(), "pretraining finished before the kill: save more often"
        assert no_kernels_left(tag)
        first_done = {p.name: p.read_text() for p in run_dir.glob("*.done")}
        assert set(first_done) == {f"{s}.done" for s in STAGES[:4]}

        # 2. the same command: 01-04 skipped, 05 continues; killed in the evaluation stage
        proc = start(env, log, tmp_path)
        wait_for(lambda: (run_dir / "09_engine.done").exists(), proc, what="stage 09")
        time.sleep(6)  # inside 10_eval (~20 s)
        assert proc.poll() is None, "the run ended before the second kill"
        kill(proc)
        assert not (run_dir / "10_eval.done").exists()
        assert no_kernels_left(tag)

        # 3. the same command once more, to the end
        proc = start(env, log, tmp_path)
        assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    for name, text in first_done.items():
        assert (run_dir / name).read_text() == text, f"{name}: a complete stage was run again"
    assert "auto_resume: continuing from step" in notebook_text(run_dir / "05_pretrain.ipynb")
    assert all((run_dir / f"{s}.done").exists() and (run_dir / f"{s}.ipynb").exists() for s in STAGES)
    report = (base / "report.md").read_text()
    for title in ("Tokenizer", "Base model pretraining", "Midtraining", "Supervised fine-tuning",
                  "Reinforcement learning (GRPO)", "Inference engine", "Evaluation"):
        assert f"## {title}" in report, title
