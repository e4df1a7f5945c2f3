"""Executing one notebook: in a fresh kernel (papermill), or as N ranks under torchrun.

A stage with nproc > 1 is started with torchrun. Every rank runs this module as
`python -m nanochat.launch _rank ...`, which executes the same notebook through
papermill; the kernel it starts inherits RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT, so nanochat.common.init_distributed() inside the notebook joins the group.
When any rank fails, torchrun stops the others (SIGTERM) at once, each rank takes its
kernel down with it, and the runner prints the failing cell and traceback of the rank
that failed first. A hang is bounded by the cell timeout (per cell, papermill) and by
the dist timeout, exported as NANOCHAT_DIST_TIMEOUT for the process group's timeout.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nanochat import common
from nanochat.stages import Stage


class StageFailed(Exception):
    """A notebook raised, timed out or lost its kernel. Exit code 1."""


_live_kernels = []  # kernel managers started by this process, for a clean exit


def _tracked_kernel_manager():
    """A kernel manager class that remembers its kernels and always uses TCP.

    jupyter_client starts each kernel in its own session, so killing a rank's process
    group does not reach its kernel. Remembering the kernel lets a dying rank take it
    along (kill_kernels). TCP, because with IPC transport all ranks' kernels in one
    folder would fight over the same socket file names.
    """
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport = "tcp"

        async def start_kernel(self, **kwargs):
            await super().start_kernel(**kwargs)
            _live_kernels.append(self)

    return TrackedKernelManager


def kill_kernels() -> None:
    """SIGKILL the process group of every kernel this process started that is still alive."""
    while _live_kernels:
        km = _live_kernels.pop()
        process = getattr(km.provisioner, "process", None)
        if process is not None and process.poll() is None:
            try:
                os.killpg(km.provisioner.pgid or process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class LinePrefixer:
    """A file-like object that prefixes every line, so interleaved ranks stay readable."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.partial = stream, prefix, ""

    def write(self, text: str) -> int:
        # whole lines go out in one write() each: lines of different ranks do not mix
        self.partial += text
        *lines, self.partial = re.split(r"(?<=\n)|(?<=\r)(?!\n)", self.partial)  # \r: a progress bar
        for line in lines:
            self.stream.write(self.prefix + line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.partial:
            self.stream.write(self.prefix + self.partial + "\n")
            self.partial = ""
        self.stream.flush()


def describe_failure(error: BaseException) -> str:
    """What a person needs to fix a failed notebook: the cell's source and its traceback."""
    from papermill.exceptions import PapermillExecutionError, strip_color

    if isinstance(error, PapermillExecutionError):
        source = "\n".join("    " + line for line in error.source.splitlines())
        trace = strip_color("\n".join(error.traceback))
        return f"{error.ename}: {error.evalue}\nin cell [{error.exec_count}]:\n{source}\n{trace}"
    return f"{type(error).__name__}: {error}"  # CellTimeoutError's message previews the cell


def execute(notebook: Path, output: Path | None, parameters: dict, cell_timeout: float | None,
            stdout=None, stderr=None, on_cell_error=None) -> None:
    """Run a notebook top to bottom in a fresh python3 kernel; raise StageFailed on any error.

    The kernel starts in the notebook's folder (as in Jupyter and nbval) and inherits this
    process's environment, with $NANOCHAT_HEADLESS set: progress bars there are text
    (common.tqdm), not widgets that a saved notebook would keep at their first frame.
    A cell that runs longer than cell_timeout is stopped.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    previous = os.environ.get(common.HEADLESS)
    os.environ[common.HEADLESS] = "1"  # the kernel inherits it when it starts
    try:
        papermill.execute_notebook(
            str(notebook), str(output) if output else None, parameters=parameters,
            kernel_name="python3", cwd=str(notebook.parent), progress_bar=False,
            stdout_file=stdout, stderr_file=stderr, execution_timeout=cell_timeout,
            kernel_manager_class=_tracked_kernel_manager(), on_cell_error=on_cell_error,
            # the kernel listens on 127.0.0.1 only; hush its warning about unencrypted TCP
            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except (PapermillExecutionError, CellTimeoutError, DeadKernelError) as e:
        raise StageFailed(describe_failure(e)) from e
    finally:
        kill_kernels()  # normally a no-op: papermill has shut the kernel down
        if previous is None:
            os.environ.pop(common.HEADLESS, None)
        else:
            os.environ[common.HEADLESS] = previous


def run_rank(argv: list[str]) -> int:
    """One torchrun rank: execute the notebook, report an error to the runner, exit."""
    parser = argparse.ArgumentParser(prog="nanochat.launch _rank")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="rank 0's executed notebook")
    parser.add_argument("--parameters", default="{}", help="JSON")
    parser.add_argument("--cell-timeout", type=float, default=None)
    args = parser.parse_args(argv)
    rank = common.torchrun_env().rank  # the kernel joins the group; this launcher never does

    def stop(signum, frame):
        # torchrun sends SIGTERM to every rank when one fails: take the kernel along
        kill_kernels()
        sys.stdout.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed_at = []  # when the kernel reported the error: the earliest rank is the root cause
    stdout = LinePrefixer(sys.stdout, f"[rank {rank}] ")
    stderr = LinePrefixer(sys.stderr, f"[rank {rank}] ")
    try:
        execute(args.notebook, args.output if rank == 0 else None, json.loads(args.parameters),
                args.cell_timeout, stdout, stderr,
                on_cell_error=lambda **kwargs: failed_at.append(time.time()))
        return 0
    except StageFailed as e:
        error = {"rank": rank, "node": int(os.environ.get("GROUP_RANK", 0)), "host": socket.gethostname(),
                 "time": failed_at[0] if failed_at else time.time(), "message": str(e)}
        common.atomic_write(error_path(args.output.parent, args.notebook.stem, rank), json.dumps(error))
        stderr.write(f"failed: {str(e).splitlines()[0]} (the cell and traceback follow at the end)\n")
        return 1
    finally:
        stdout.close()
        stderr.close()


def error_path(folder: Path, stage_name: str, rank: int) -> Path:
    """Where rank `rank` of a failed stage leaves its error: NN_name.rankR.error in the run folder."""
    return folder / f"{stage_name}.rank{rank}.error"


def stop_process_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM a process group, and SIGKILL it if it is still there after grace_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_distributed(stage: Stage, executed: Path, dist_timeout: float, cluster=None, stage_index: int = 0) -> None:
    """Start this node's ranks of the stage with torchrun and wait; on failure show the root-cause rank.

    With several nodes (nanochat/cluster.py) every node runs this for the same stage; a rank that
    fails anywhere leaves its error file in the shared run folder, and each node stops its own
    ranks when it sees one, instead of waiting in a collective for a peer that is gone.
    """
    from nanochat.cluster import Cluster

    cluster = cluster or Cluster()
    started = time.time()
    if cluster.is_leader:  # another node's fresh error must survive this node's late start
        for stale in executed.parent.glob(f"{stage.name}.rank*.error"):
            stale.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", *cluster.rendezvous_args(stage_index),
           "--nproc_per_node", str(stage.nproc), "--max_restarts", "0",
           "-m", "nanochat.launch", "_rank", str(stage.notebook), "--output", str(executed),
           "--parameters", json.dumps(stage.parameters)]
    if stage.cell_timeout:
        cmd += ["--cell-timeout", str(stage.cell_timeout)]
    env = dict(os.environ, NANOCHAT_DIST_TIMEOUT=str(dist_timeout))
    # torchrun gives each rank 1 thread unless told otherwise (and prints a banner saying so)
    env.setdefault("OMP_NUM_THREADS", "1")
    # its own process group, so that everything it started can be stopped together
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)

    def errors_of() -> list[dict]:
        """This attempt's rank errors (older files: an earlier attempt; 5 s of slack for other nodes' clocks)."""
        found = [json.loads(path.read_text()) for path in executed.parent.glob(f"{stage.name}.rank*.error")]
        return sorted((e for e in found if e["time"] >= started - 5), key=lambda e: e["time"])

    try:
        seen_error_at = None
        while (returncode := proc.poll()) is None:
            time.sleep(0.5)
            if seen_error_at is None and errors_of():
                seen_error_at = time.time()  # a rank failed, on this node or another
            if seen_error_at is not None and time.time() - seen_error_at > 3:
                break  # its peers may wait in a collective forever: stop them
    finally:
        stop_process_group(proc)
    returncode = proc.wait() if returncode is None else returncode
    if returncode != 0:
        errors = errors_of()
        if not errors:
            raise StageFailed(f"torchrun exited with code {returncode} before any rank reported "
                              f"an error (see its output above)")
        world = stage.nproc * cluster.nnodes
        where = lambda e: f" (node {e['node']}, {e['host']})" if cluster.multi_node else ""  # noqa: E731
        first, *others = errors
        message = f"rank {first['rank']} of {world}{where(first)} failed first: {first['message']}"
        for other in others:  # usually a consequence: a collective lost its peer
            message += f"\n(rank {other['rank']}{where(other)} failed after it: {other['message'].splitlines()[0]})"
        raise StageFailed(message)


if __name__ == "__main__":
    if sys.argv[1:2] != ["_rank"]:
        sys.exit("usage: python -m nanochat.launch _rank NOTEBOOK --output PATH [--parameters JSON] "
                 "(started by `nanochat run`, one per torchrun rank)")
    sys.exit(run_rank(sys.argv[2:]))
