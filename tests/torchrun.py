"""Launch a test script as 2 CPU ranks (gloo) under torchrun and read back what it wrote."""
import json
import os
import subprocess
import sys


def launch_two_ranks(script: str, *args, timeout: float = 180) -> None:
    """Run `script *args` on 2 ranks (one thread each); fail with the ranks' output if any rank fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, *map(str, args)]
    result = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"


def run_two_ranks(script: str, out_path, timeout: float = 180) -> object:
    """Run `script out_path` on 2 ranks and return the JSON it wrote to out_path."""
    launch_two_ranks(script, out_path, timeout=timeout)
    with open(out_path) as f:
        return json.load(f)
