"""bench/gpu_check.py, the check to run on a GPU node before a paid run, kept working on this CPU at --small."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--small", *args], capture_output=True, text=True, timeout=600)


def test_every_check_runs_at_the_small_size_with_notebooks_03_and_09_in_bf16():
    done = run()
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.split("\n\n")[-2]
    rows = {line.split()[0]: line.split()[1] for line in table.splitlines()}
    assert rows == {"training": "ok", "loss": "ok", "fa3": "skipped", "notebooks": "ok", "decode": "ok"}, table
    assert "every assertion held in bf16: 03_model" in done.stdout and "all checks passed" in done.stdout


def test_a_failed_check_is_a_row_and_the_exit_status():
    done = run("--only", "training", "--memory-budget-gib", "0.01")
    assert done.returncode == 1
    assert "training  FAIL" in done.stdout and "more than the budget of 0.01 GiB" in done.stdout
    assert "1 check(s) failed: training" in done.stdout
