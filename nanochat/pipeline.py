"""The headless course: run the numbered notebooks in order, with papermill and torchrun.

    nanochat run --profile speedrun            # the whole course on an 8xH100 node
    nanochat run --profile tiny --only 01      # one stage with its tiny defaults
    nanochat run --profile cpu -p 05_pretrain.depth=4 --from 05 --force

Each notebook in notebooks/ (NN_name.ipynb) is one stage. A profile
(nanochat/profiles/NAME.toml) says, per stage, how many ranks to start and which
parameters to inject; papermill writes them into a cell after the notebook's cell
tagged `parameters`, so the notebook's own defaults are simply overridden.

Where things go, under the base dir (NANOCHAT_BASE_DIR):
    runs/<run>/NN_name.ipynb     the executed notebook (rank 0's), written as it runs
    runs/<run>/NN_name.done      the completion marker (JSON: time, wall time, params)
    runs/<run>/NN_name.rankR.error   what went wrong on rank R, if the stage failed

A stage is *complete* when its marker exists and its executed notebook is there. The
marker is written atomically (temp file, then rename) only after every rank finished
without an error, so a crash, a Ctrl-C or a power cut leaves no marker, and running the
same command again skips the complete stages and continues where it stopped. --force
reruns the selected stages (only those: add --from NN to redo everything after NN).

The report card (nanochat/report.py) is reset when a run starts fresh (no stage of it is
complete yet, or --force reruns it from its first stage), not when it resumes, and
report.md is assembled when every selected stage has finished.

A stage with nproc > 1 is started with torchrun. Every rank runs this module as
`python -m nanochat.pipeline _rank ...`, which executes the same notebook through
papermill; the kernel it starts inherits RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT, so nanochat.common.init_distributed() inside the notebook joins the group.
When any rank fails, torchrun stops the others (SIGTERM) at once, each rank takes its
kernel down with it, and the runner prints the failing cell and traceback of the rank
that failed first. A hang is bounded by --cell-timeout (per cell, papermill) and by
--dist-timeout, exported as NANOCHAT_DIST_TIMEOUT for the process group's timeout.
"""
import argparse
import difflib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser, under its PyPI name
    import tomli as tomllib

PACKAGE_DIR = Path(__file__).resolve().parent
PROFILES_DIR = PACKAGE_DIR / "profiles"
NOTEBOOKS_DIR = PACKAGE_DIR.parent / "notebooks"  # the repo's notebooks/, next to nanochat/
STAGE_NAME = re.compile(r"^(\d\d)_\w+$")  # 05_pretrain: two digits set the order
STAGE_KEYS = {"nproc", "parameters", "cell_timeout"}  # what a [stages.NN_name] table may hold


class PipelineError(Exception):
    """Bad input (profile, parameter, stage name): nothing has run. Exit code 2."""


class StageFailed(Exception):
    """A notebook raised, timed out or lost its kernel. Exit code 1."""


# -----------------------------------------------------------------------------
# Profiles and the plan

@dataclass
class Stage:
    """One notebook of the run, with what the profile and the command line ask of it."""
    name: str                      # 05_pretrain
    notebook: Path | None          # None: the profile names it but it is not written yet
    nproc: int = 1
    parameters: dict = field(default_factory=dict)
    cell_timeout: float | None = None  # seconds per cell; None waits forever
    declared: dict = field(default_factory=dict)  # papermill.inspect_notebook's answer


def profile_path(name: str) -> Path:
    """A profile by name (nanochat/profiles/NAME.toml) or by path (anything ending .toml)."""
    if name.endswith(".toml") or os.sep in name:
        path = Path(name)
    else:
        path = PROFILES_DIR / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise PipelineError(f"no profile {name!r} (looked for {path}). Known profiles: {known}; "
                            f"or pass the path of a .toml file")
    return path


def load_profile(name: str) -> dict:
    """Read and check a profile, so a typo in it fails before hours of compute, not after."""
    path = profile_path(name)
    try:
        profile = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PipelineError(f"{path} is not valid TOML: {e}") from None
    unknown = set(profile) - {"profile", "stages"}
    if unknown:
        raise PipelineError(f"{path}: unknown top-level table(s) {sorted(unknown)}; "
                            f"a profile has [profile] and [stages.NN_name] tables")
    meta = profile.get("profile", {})
    missing = {"description", "hours", "cost_usd", "gpus"} - set(meta)
    if missing:
        raise PipelineError(f"{path}: [profile] lacks {sorted(missing)}")
    for stage, table in profile.get("stages", {}).items():
        if not STAGE_NAME.match(stage):
            raise PipelineError(f"{path}: [stages.{stage}] should be named after a notebook, "
                                f"like [stages.05_pretrain]")
        extra = set(table) - STAGE_KEYS
        if extra:
            raise PipelineError(f"{path}: [stages.{stage}] has unknown key(s) {sorted(extra)}; "
                                f"allowed: {sorted(STAGE_KEYS)} (notebook parameters go in "
                                f"[stages.{stage}.parameters])")
        if not isinstance(table.get("nproc", 1), int) or table.get("nproc", 1) < 1:
            raise PipelineError(f"{path}: [stages.{stage}] nproc must be a positive integer")
        if not isinstance(table.get("parameters", {}), dict):
            raise PipelineError(f"{path}: parameters of {stage} go in a [stages.{stage}.parameters] table")
        if not isinstance(table.get("cell_timeout", 0), (int, float)):
            raise PipelineError(f"{path}: [stages.{stage}] cell_timeout must be a number of seconds")
    profile["name"] = path.stem
    profile["path"] = str(path)
    return profile


def find_notebooks(notebooks_dir: Path) -> dict[str, Path]:
    """The stages that exist: notebooks named NN_name.ipynb, by name."""
    if not notebooks_dir.is_dir():
        raise PipelineError(f"no notebooks folder at {notebooks_dir}: run from a clone of the "
                            f"course repo, or pass --notebooks DIR")
    return {p.stem: p for p in sorted(notebooks_dir.glob("*.ipynb")) if STAGE_NAME.match(p.stem)}


def plan_stages(profile: dict, notebooks_dir: Path) -> list[Stage]:
    """All stages in order: the notebooks that exist plus the ones the profile names."""
    notebooks = find_notebooks(notebooks_dir)
    wanted = profile.get("stages", {})
    stages = []
    for name in sorted(set(notebooks) | set(wanted)):
        table = wanted.get(name, {})
        stages.append(Stage(name=name, notebook=notebooks.get(name), nproc=table.get("nproc", 1),
                            parameters=dict(table.get("parameters", {})),
                            cell_timeout=table.get("cell_timeout")))
    return stages


def select_stages(stages: list[Stage], start: str | None, only: str | None) -> list[Stage]:
    """--from NN keeps NN and everything after it; --only NN keeps just NN."""
    def index_of(key: str) -> int:
        for i, stage in enumerate(stages):
            if key == stage.name or (key.isdigit() and int(key) == int(stage.name[:2])):
                return i
        raise PipelineError(f"no stage {key!r}; stages: {', '.join(s.name for s in stages)}")
    if only is not None:
        return [stages[index_of(only)]]
    if start is not None:
        return stages[index_of(start):]
    return stages


def parse_value(text: str):
    """A -p value as TOML (4, 3e-4, true, [1, 2]), else JSON (null), else a plain string."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str]) -> list[tuple[str | None, str, object]]:
    """'key=value' (every stage that declares key) or 'NN_name.key=value' (one stage)."""
    overrides = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise PipelineError(f"-p {item!r}: expected KEY=VALUE or NN_name.KEY=VALUE")
        stage, dot, key = key.rpartition(".")
        overrides.append((stage if dot else None, key, parse_value(text)))
    return overrides


def suggest(name: str, valid) -> str:
    """A 'did you mean' hint from the closest valid names (difflib)."""
    close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def apply_and_validate(stages: list[Stage], overrides, all_stages: list[Stage]) -> None:
    """Inject -p overrides, then check every parameter against the notebook's `parameters` cell.

    papermill only warns about a parameter the notebook does not declare, and the run goes
    on with the default: a misspelled `device_bacth_size` would silently train with the
    wrong batch. Here it is an error naming the stage, the name and the closest valid ones.
    """
    import papermill

    for stage in stages:
        if stage.notebook is not None:
            try:
                stage.declared = papermill.inspect_notebook(str(stage.notebook))
            except Exception as e:  # not JSON, not a notebook, a parameters cell papermill cannot parse
                raise PipelineError(f"cannot read the parameters of {stage.notebook}: {e}") from e
    errors = []
    known_names = {s.name for s in all_stages}
    for target, key, value in overrides:
        if target is None:
            hits = [s for s in stages if key in s.declared]
            if not hits:
                every = {k for s in stages for k in s.declared}
                errors.append(f"-p {key}: no stage in this run declares a parameter {key!r}"
                              f"{suggest(key, every)}")
            for stage in hits:
                stage.parameters[key] = value
        elif target not in known_names:
            errors.append(f"-p {target}.{key}: no stage {target!r}{suggest(target, known_names)}")
        else:
            for stage in stages:
                if stage.name == target:
                    stage.parameters[key] = value
    for stage in stages:
        if stage.notebook is None:
            continue
        for key in stage.parameters:
            if key not in stage.declared:
                valid = sorted(stage.declared) or ["(none: the notebook has no cell tagged `parameters`)"]
                errors.append(f"stage {stage.name}: unknown parameter {key!r}{suggest(key, stage.declared)} "
                              f"(declared in {stage.notebook.name}: {', '.join(valid)})")
    if errors:
        raise PipelineError("parameters rejected, nothing was run:\n  " + "\n  ".join(errors))


# -----------------------------------------------------------------------------
# Executing one notebook: the same code for a single process and for each torchrun rank

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
    process's environment. A cell that runs longer than cell_timeout is stopped.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

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


def run_rank(argv: list[str]) -> int:
    """One torchrun rank: execute the notebook, report an error to the runner, exit."""
    parser = argparse.ArgumentParser(prog="nanochat.pipeline _rank")
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--output", type=Path, required=True, help="rank 0's executed notebook")
    parser.add_argument("--parameters", default="{}", help="JSON")
    parser.add_argument("--cell-timeout", type=float, default=None)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))

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
        error = {"rank": rank, "time": failed_at[0] if failed_at else time.time(), "message": str(e)}
        write_atomic(error_path(args.output, rank), json.dumps(error))
        stderr.write(f"failed: {str(e).splitlines()[0]} (the cell and traceback follow at the end)\n")
        return 1
    finally:
        stdout.close()
        stderr.close()


# -----------------------------------------------------------------------------
# The runner

def write_atomic(path: Path, text: str) -> None:
    """Write to a temp name, then rename: readers see the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def error_path(executed: Path, rank: int) -> Path:
    return executed.with_name(f"{executed.stem}.rank{rank}.error")


def free_port() -> int:
    """A TCP port nobody listens on now, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def run_distributed(stage: Stage, executed: Path, dist_timeout: float) -> None:
    """Start the stage's ranks with torchrun and wait; on failure show the root-cause rank."""
    for stale in executed.parent.glob(f"{executed.stem}.rank*.error"):
        stale.unlink()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", str(stage.nproc), "--max_restarts", "0",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           "-m", "nanochat.pipeline", "_rank", str(stage.notebook), "--output", str(executed),
           "--parameters", json.dumps(stage.parameters)]
    if stage.cell_timeout:
        cmd += ["--cell-timeout", str(stage.cell_timeout)]
    env = dict(os.environ, NANOCHAT_DIST_TIMEOUT=str(dist_timeout))
    # torchrun gives each rank 1 thread unless told otherwise (and prints a banner saying so)
    env.setdefault("OMP_NUM_THREADS", "1")
    # its own process group, so that everything it started can be stopped together
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        returncode = proc.wait()
    finally:
        stop_process_group(proc)
    if returncode != 0:
        errors = sorted((json.loads(p.read_text()) for p in
                         executed.parent.glob(f"{executed.stem}.rank*.error")), key=lambda e: e["time"])
        if not errors:
            raise StageFailed(f"torchrun exited with code {returncode} before any rank reported "
                              f"an error (see its output above)")
        first, *others = errors
        message = f"rank {first['rank']} of {stage.nproc} failed first: {first['message']}"
        for other in others:  # usually a consequence: a collective lost its peer
            message += f"\n(rank {other['rank']} failed after it: {other['message'].splitlines()[0]})"
        raise StageFailed(message)


def run_stage(stage: Stage, run_dir: Path, dist_timeout: float) -> float:
    """Execute one stage (1 process or torchrun) and mark it complete; returns wall seconds."""
    executed = run_dir / f"{stage.name}.ipynb"
    marker = run_dir / f"{stage.name}.done"
    marker.unlink(missing_ok=True)
    t0 = time.time()
    if stage.nproc == 1:
        execute(stage.notebook, executed, stage.parameters, stage.cell_timeout,
                stdout=sys.stdout, stderr=sys.stderr)
    else:
        run_distributed(stage, executed, dist_timeout)
    wall = time.time() - t0
    done = {"stage": stage.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_time_s": round(wall, 3), "nproc": stage.nproc, "parameters": stage.parameters}
    write_atomic(marker, json.dumps(done, indent=2) + "\n")
    return wall


def is_complete(stage: Stage, run_dir: Path) -> bool:
    """Complete = the marker exists and the executed notebook is there (see the module doc)."""
    return (run_dir / f"{stage.name}.done").is_file() and (run_dir / f"{stage.name}.ipynb").is_file()


def run(args) -> None:
    """nanochat run: plan, validate everything, then execute the stages in order."""
    profile = load_profile(args.profile)
    all_stages = plan_stages(profile, Path(args.notebooks))
    stages = select_stages(all_stages, args.start, args.only)
    apply_and_validate(stages, parse_overrides(args.param or []), all_stages)
    from nanochat import report  # imports torch: only once the input is known to be good
    from nanochat.common import get_base_dir

    for stage in stages:
        if args.cell_timeout is not None:
            stage.cell_timeout = args.cell_timeout
    run_dir = Path(get_base_dir()) / "runs" / (args.run or profile["name"])

    print(f"nanochat run: profile {profile['name']} ({profile['profile']['description']}), "
          f"run folder {run_dir}")
    todo = []
    for stage in stages:
        if stage.notebook is None:
            status = "skip: no notebook yet (listed in the profile)"
        elif is_complete(stage, run_dir) and not args.force:
            status = "skip: complete"
            done = json.loads((run_dir / f"{stage.name}.done").read_text())
            if done.get("parameters") != stage.parameters:
                status += " (with different parameters: --force to rerun)"
        else:
            status = "run"
            todo.append(stage)
        print(f"  {stage.name:<16} nproc {stage.nproc}  {status}")
    if args.dry_run:
        return

    run_dir.mkdir(parents=True, exist_ok=True)
    fresh = not any(run_dir.glob("*.done")) or (args.force and stages and stages[0] is all_stages[0])
    if fresh:
        report.reset(profile)
    for stage in todo:
        print(f"\n=== {stage.name}: {stage.notebook}  (nproc {stage.nproc}) ===", flush=True)
        try:
            wall = run_stage(stage, run_dir, args.dist_timeout)
        except StageFailed as e:
            raise StageFailed(f"stage {stage.name} failed; its executed notebook: "
                              f"{run_dir / (stage.name + '.ipynb')}\n{e}") from None
        print(f"=== {stage.name}: done in {wall:.1f}s ===", flush=True)
    path = report.generate(run_dir=run_dir)
    print(f"\nreport card: {path}")


def list_profiles() -> None:
    """nanochat profiles: what each profile costs, for choosing one."""
    print(f"{'profile':<10} {'hours':>6} {'cost':>7}  {'gpus':<8} description")
    for path in sorted(PROFILES_DIR.glob("*.toml")):
        meta = load_profile(str(path))["profile"]
        print(f"{path.stem:<10} {meta['hours']:>6} {'$' + str(meta['cost_usd']):>7}  "
              f"{meta['gpus']:<8} {meta['description']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanochat", description="Run the nanochat course headlessly.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = commands.add_parser("run", help="execute the notebooks in order (resumes a stopped run)",
                            description="Execute the numbered notebooks in order with papermill "
                                        "(torchrun for stages with nproc > 1). Complete stages are "
                                        "skipped, so the same command resumes a stopped run.")
    r.add_argument("--profile", default="tiny",
                   help="a profile in nanochat/profiles (tiny, cpu, speedrun, d26, d32) or a .toml path")
    r.add_argument("--run", help="run name: executed notebooks go to BASE_DIR/runs/RUN "
                                 "(default: the profile's name)")
    r.add_argument("--from", dest="start", metavar="NN", help="start at stage NN (e.g. 05 or 05_pretrain)")
    r.add_argument("--only", metavar="NN", help="run stage NN only")
    r.add_argument("--force", action="store_true", help="rerun the selected stages even if complete")
    r.add_argument("-p", "--param", action="extend", nargs="+", metavar="KEY=VALUE",
                   help="set a parameter in every stage that declares it, or in one stage with "
                        "NN_name.KEY=VALUE; VALUE is a TOML/JSON literal, else a string")
    r.add_argument("--notebooks", metavar="DIR", default=str(NOTEBOOKS_DIR), help="folder of NN_name.ipynb (default: %(default)s)")
    r.add_argument("--cell-timeout", type=float, metavar="S",
                   help="stop a cell after S seconds (default: the profile's cell_timeout, else none)")
    r.add_argument("--dist-timeout", type=float, default=600.0, metavar="S",
                   help="process-group timeout for torchrun stages, as NANOCHAT_DIST_TIMEOUT (default: %(default)s)")
    r.add_argument("--dry-run", action="store_true", help="validate and show the plan, run nothing")
    commands.add_parser("profiles", help="list the profiles with their expected time and cost")
    commands.add_parser("report", help="the report card: reset | generate (see nanochat report --help)")
    commands.add_parser("chat", help="chat with a trained model in the terminal (see nanochat chat --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `nanochat` console command."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_rank"]:  # internal: one torchrun rank
        return run_rank(argv[1:])
    try:
        if argv[:1] == ["report"]:  # report has its own parser (and its own --help)
            from nanochat import report
            return report.main(argv[1:])
        if argv[:1] == ["chat"]:  # so does chat
            from nanochat.ui import cli
            return cli.main(argv[1:])
        args = build_parser().parse_args(argv)
        if args.command == "profiles":
            list_profiles()
            return 0
        run(args)
        return 0
    except PipelineError as e:
        print(f"nanochat: error: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"\nnanochat: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnanochat: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
