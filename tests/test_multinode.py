"""Two "nodes" on this machine: two `nanochat run` processes with --nnodes 2, one CPU rank each (gloo),
meeting on 127.0.0.1, as two terminals on two machines would (nanochat/cluster.py)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import base_dirs
from nanochat.cluster import free_port
from test_chat_stages import SMALL, chat_inputs  # noqa: F401 - the fixture: a tokenizer and a random d1 base model
from test_pipeline import notebooks, profile

pytestmark = pytest.mark.distributed


def start_nodes(tmp_path, args, base_dirs_by_node, port):
    """Both nodes' runners, node 0 first; returns the processes and their log files."""
    procs = []
    for node, base in enumerate(base_dirs_by_node):
        log = open(tmp_path / f"node{node}.log", "w")
        env = dict(os.environ, NANOCHAT_BASE_DIR=str(base))
        cmd = [sys.executable, "-m", "nanochat.cli", "run", *args, "--nnodes", "2", "--node-rank", str(node),
               "--master-addr", "127.0.0.1", "--master-port", str(port), "--nproc-per-node", "1", "--dist-timeout", "300"]
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path), log))
        time.sleep(0.5)
    return procs


def finish(procs, timeout=600) -> list[tuple[int, str]]:
    results = []
    for proc, log in procs:
        code = proc.wait(timeout=timeout)
        log.close()
        results.append((code, Path(log.name).read_text()))
    return results


def test_two_nodes_share_one_stage(tmp_path, base_dir):
    nbs = notebooks(tmp_path, "01_first", "03_allreduce")
    prof = profile(tmp_path, {"03_allreduce": {"nproc": 2, "parameters": {"scale": 2.0}}})
    run_dir = Path(base_dir) / "runs" / "nodes"
    run_dir.mkdir(parents=True)  # an error left by an earlier, failed attempt must not stop this one
    (run_dir / "03_allreduce.rank1.error").write_text(json.dumps({"rank": 1, "node": 1, "host": "h", "time": 0.0,
                                                                  "message": "an old failure"}))
    (code0, out0), (code1, out1) = finish(start_nodes(tmp_path, ["--profile", prof, "--run", "nodes", "--notebooks", nbs],
                                                      [base_dir, base_dir], free_port()))
    assert code0 == 0 and code1 == 0, out0 + out1
    assert "=== 01_first: runs on node 0 alone; waiting for it ===" in out1  # single-process stages: node 0 only
    assert "rank 0 of 2 joined" in out0 and "rank 1 of 2 joined" in out1
    assert sorted(p.name for p in run_dir.glob("*.ipynb")) == ["01_first.ipynb", "03_allreduce.ipynb"]  # one notebook each
    executed = (run_dir / "03_allreduce.ipynb").read_text()
    assert "contributions=[2.0, 4.0] all_reduce_total=6.0" in executed  # node 1's rank did its part


def test_a_rank_failing_on_node_1_fails_both_nodes_within_seconds(tmp_path, base_dir):
    nbs = notebooks(tmp_path, "04_rank1_fails")
    prof = profile(tmp_path, {"04_rank1_fails": {"nproc": 2}})
    t0 = time.time()
    (code0, out0), (code1, out1) = finish(start_nodes(tmp_path, ["--profile", prof, "--run", "fail", "--notebooks", nbs],
                                                      [base_dir, base_dir], free_port()), timeout=200)
    failed_at = json.loads((Path(base_dir) / "runs" / "fail" / "04_rank1_fails.rank1.error").read_text())["time"]
    assert code0 == 1 and code1 == 1
    assert "rank 1 of 2 (node 1, " in out0 and "failed first: ValueError: rank 1 fails on purpose" in out0
    assert time.time() - failed_at < 30, "node 0 waited for a rank that was gone"  # the dist timeout is 300 s
    assert time.time() - t0 < 120


def test_a_base_dir_that_is_not_shared_is_a_clear_error(tmp_path, base_dir):
    nbs = notebooks(tmp_path, "03_allreduce")
    prof = profile(tmp_path, {"03_allreduce": {"nproc": 2}})
    other = tmp_path / "node1-base"
    other.mkdir()
    (code0, out0), (code1, out1) = finish(start_nodes(tmp_path, ["--profile", prof, "--run", "x", "--notebooks", nbs],
                                                      [base_dir, other], free_port()), timeout=200)
    assert code1 == 2 and "does not see node 0's run folder" in out1 and "shared by every node" in out1
    assert code0 != 0  # node 0 stops too, instead of waiting for a node that will never come


@pytest.mark.slow
def test_two_nodes_fine_tune_one_model(chat_inputs, tmp_path, monkeypatch):  # noqa: F811
    base = base_dirs.fresh_base_dir(chat_inputs, tmp_path / "base", monkeypatch,
                                    shared=("tokenizer", "task_data", "checkpoints/base"))
    params = {**SMALL["07_sft"], "num_iterations": 4, "total_batch_size": 512}  # 2 rows x 128 x 2 ranks
    prof = tmp_path / "nodes.toml"
    prof.write_text('[profile]\ndescription = "test"\nhours = 0\ncost_usd = 0\ngpus = "none"\n'
                    '[stages.07_sft]\nnproc = 2\n[stages.07_sft.parameters]\n'
                    + "".join(f"{key} = {json.dumps(value)}\n" for key, value in params.items()))
    results = finish(start_nodes(tmp_path, ["--profile", str(prof), "--run", "nodes", "--only", "07",
                                            "--cell-timeout", "600"], [base, base], free_port()))
    assert all(code == 0 for code, _ in results), results[0][1][-2000:] + results[1][1][-2000:]
    run_dir = base / "runs" / "nodes"
    assert [p.name for p in run_dir.glob("*.ipynb")] == ["07_sft.ipynb"] and (run_dir / "07_sft.done").exists()
    meta = json.loads((base / "checkpoints" / "sft" / "d1" / "meta_000004.json").read_text())
    assert meta["world_size"] == 2  # one model, trained by a rank on each node
