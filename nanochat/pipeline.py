"""The headless course: run the numbered notebooks in order, with papermill and torchrun.

    nanochat run --profile speedrun            # the whole course on an 8xH100 node
    nanochat run --profile tiny --only 01      # one stage with its tiny defaults
    nanochat run --profile cpu -p 05_pretrain.depth=4 --from 05 --force

Each notebook in notebooks/ (NN_name.ipynb) is one stage; the profile and -p overrides
(nanochat/stages.py) say how many ranks to start and which parameters to inject, and
papermill writes them into a cell after the notebook's cell tagged `parameters`, so the
notebook's own defaults are simply overridden. nanochat/launch.py executes one stage.

Where things go, under the base dir (common.run_dir(RUN)):
    runs/<run>/NN_name.ipynb     the executed notebook (rank 0's), written as it runs
    runs/<run>/NN_name.done      the completion marker (JSON: time, wall time, params)
    runs/<run>/NN_name.failed.ipynb  the executed notebook of a failed attempt
    runs/<run>/NN_name.rankR.error   what went wrong on rank R, if the stage failed

A stage is *complete* when its marker exists and its executed notebook is there. An attempt
writes NN_name.running.ipynb; only when every rank finished without an error does it become
NN_name.ipynb and get its marker (both atomic renames), so a crash, a Ctrl-C or a power cut
leaves no marker, a failed --force rerun leaves the last good result in place, and running
the same command again skips the complete stages and continues where it stopped. A
training stage (one that declares `auto_resume`) is started with auto_resume = True, so
one killed mid-way continues from its last complete checkpoint instead of step 0; the
profiles save one every few minutes of training. --force reruns the selected stages from
scratch (only those: add --from NN to redo everything after NN).

The report card (nanochat/report.py) is reset when a run starts fresh (no stage of it is
complete yet, or --force reruns it from its first stage), not when it resumes, and
report.md is assembled when every selected stage has finished.
"""
import json
import sys
import time
from pathlib import Path

from nanochat import common
from nanochat.cluster import Cluster
from nanochat.launch import StageFailed, execute, run_distributed
from nanochat.stages import (RESUME_KEYS, PipelineError, Stage, apply_and_validate, load_profile, parse_overrides,
                             plan_stages, select_stages)


AUTO_RESUME = "auto_resume"  # a training notebook that declares it continues from its last checkpoint


def without_resume(parameters: dict) -> dict:
    """The parameters that say what a stage computes (how it starts and stores does not count)."""
    return {k: v for k, v in parameters.items() if k not in RESUME_KEYS}


def effective(stage: Stage, parameters: dict) -> dict:
    """What a stage computes with these overrides: its notebook's defaults, overridden (a default
    passed with -p is the same run as one left out)."""
    return without_resume({**stage.declared, **parameters})


def run_stage(stage: Stage, run_dir: Path, dist_timeout: float, cluster: Cluster | None = None,
              stage_index: int = 0, distributed: bool | None = None) -> float:
    """Execute one stage (1 process or torchrun) and mark it complete; returns wall seconds.

    The attempt is written beside the last good result (NN_name.running.ipynb) and replaces it
    only on success, so a failed rerun never destroys what the previous run produced; a failed
    attempt is kept as NN_name.failed.ipynb for its traceback.
    """
    attempt = run_dir / f"{stage.name}.running.ipynb"
    t0 = time.time()
    try:
        if not (stage.nproc > 1 if distributed is None else distributed):
            execute(stage.notebook, attempt, stage.parameters, stage.cell_timeout,
                    stdout=sys.stdout, stderr=sys.stderr)
        else:
            run_distributed(stage, attempt, dist_timeout, cluster, stage_index)
    except BaseException:
        if attempt.exists():
            attempt.replace(failed_notebook(stage, run_dir))
        raise
    wall = time.time() - t0
    if cluster is not None and not cluster.is_leader:
        return wall  # node 0 holds global rank 0: it writes the notebook and the marker
    done = {"stage": stage.name, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_time_s": round(wall, 3), "nproc": stage.nproc, "parameters": stage.parameters}
    common.publish(attempt, run_dir / f"{stage.name}.ipynb")  # the notebook first: a marker never points at nothing
    common.atomic_write(run_dir / f"{stage.name}.done", json.dumps(done, indent=2) + "\n")
    failed_notebook(stage, run_dir).unlink(missing_ok=True)
    return wall


def failed_notebook(stage: Stage, run_dir: Path) -> Path:
    """Where the executed notebook of a failed attempt is kept."""
    return run_dir / f"{stage.name}.failed.ipynb"


def is_complete(stage: Stage, run_dir: Path) -> bool:
    """Complete = the marker exists and the executed notebook is there (see the module doc)."""
    return (run_dir / f"{stage.name}.done").is_file() and (run_dir / f"{stage.name}.ipynb").is_file()


def check_costs(all_stages, selected, profile) -> None:
    """Print each selected training stage's paper cost; stop, before anything runs, if one would not fit."""
    from nanochat.costs import profile_costs

    names = {stage.name for stage in selected}
    costs = [cost for cost in profile_costs(all_stages, profile) if cost.stage in names]
    if costs:
        print("on paper (nanochat/costs.py):")
    for cost in costs:
        print(f"  {cost.stage:<16} {cost.summary}")
        if cost.memory:
            print(f"  {'':<16} {cost.memory}")
    problems = [cost.problem for cost in costs if cost.problem]
    if problems:
        raise PipelineError("; ".join(problems))


def run(args) -> None:
    """nanochat run: plan, validate everything, then execute the stages in order."""
    profile = load_profile(args.profile)
    all_stages = plan_stages(profile, Path(args.notebooks))
    stages = select_stages(all_stages, args.start, args.only)
    apply_and_validate(stages, parse_overrides(args.param or []), all_stages)
    from nanochat import report  # imports torch: only once the input is known to be good

    cluster = Cluster(args.nnodes, args.node_rank, args.master_addr, args.master_port, args.nproc_per_node)
    cluster.validate()
    for stage in stages:
        if args.cell_timeout is not None:
            stage.cell_timeout = args.cell_timeout
    distributed = {stage.name for stage in stages if stage.nproc > 1}  # torchrun stages, whatever --nproc-per-node says
    for stage in stages:
        if cluster.nproc_per_node and stage.name in distributed:
            stage.nproc = cluster.nproc_per_node
        if AUTO_RESUME in stage.declared and AUTO_RESUME not in stage.parameters and not args.force:
            stage.parameters[AUTO_RESUME] = True  # a training stage killed mid-way continues from its checkpoint
    run_dir = Path(common.run_dir(args.run or profile["name"]))

    print(f"nanochat run: profile {profile['name']} ({profile['profile']['description']}), "
          f"run folder {run_dir}" + (f", node {cluster.node_rank} of {cluster.nnodes}" if cluster.multi_node else ""))
    todo = []
    for stage in stages:
        if stage.notebook is None:
            status = "skip: no notebook yet (listed in the profile)"
        elif is_complete(stage, run_dir) and not args.force:
            status = "skip: complete"
            done = json.loads((run_dir / f"{stage.name}.done").read_text())
            if effective(stage, done.get("parameters", {})) != effective(stage, stage.parameters):
                status += " (with different parameters: --force to rerun)"
        else:
            status = "run" + (", continuing from its last checkpoint if it has one"
                              if stage.parameters.get(AUTO_RESUME) else "")
            todo.append(stage)
        print(f"  {stage.name:<16} nproc {stage.nproc}  {status}")
    check_costs(all_stages, stages, profile)
    if args.dry_run:
        return

    run_dir.mkdir(parents=True, exist_ok=True)
    if cluster.multi_node:
        cluster.connect(run_dir, [stage.name for stage in todo])  # one shared base dir, one plan, or stop here
    fresh = not any(run_dir.glob("*.done")) or (args.force and stages and stages[0] is all_stages[0])
    if fresh and cluster.is_leader:
        report.reset(profile)
    for stage in todo:
        alone = stage.name not in distributed
        if cluster.multi_node and alone and not cluster.is_leader:
            print(f"\n=== {stage.name}: runs on node 0 alone; waiting for it ===", flush=True)
            cluster.wait_for_leader(stage.name)
            continue
        print(f"\n=== {stage.name}: {stage.notebook}  (nproc {stage.nproc}"
              + (f" x {cluster.nnodes} nodes" if cluster.multi_node and not alone else "") + ") ===", flush=True)
        try:
            wall = run_stage(stage, run_dir, args.dist_timeout, cluster, all_stages.index(stage), not alone)
        except StageFailed as e:
            if alone:
                cluster.finished_alone(stage.name, ok=False)
            kept = " (the last good run's notebook and marker are kept)" if is_complete(stage, run_dir) else ""
            raise StageFailed(f"stage {stage.name} failed; its executed notebook: "
                              f"{failed_notebook(stage, run_dir)}{kept}\n{e}") from None
        if alone:
            cluster.finished_alone(stage.name, ok=True)
        print(f"=== {stage.name}: done in {wall:.1f}s ===", flush=True)
    if cluster.is_leader:
        path = report.generate(run_dir=run_dir)
        print(f"\nreport card: {path}")
