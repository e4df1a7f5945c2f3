"""Launch a test script as 2 CPU ranks (gloo) under torchrun and read back its JSON result."""
import json
import os
import subprocess
import sys


def run_two_ranks(script: str, out_path, timeout: float = 180) -> object:
    """Run `script out_path` on 2 ranks; fail with the ranks' stderr; return the JSON it wrote."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script, str(out_path)]
    result = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out_path) as f:
        return json.load(f)
