"""The notebook contract as code: what every stage notebook does at its start and at its end.

    # the first code cell after the `parameters` cell
    from nanochat.notebook import start_stage
    stage = start_stage("05_pretrain", globals(), device=device_type)
    device, master = stage.device, stage.master      # and stage.params, stage.world_size, ...

    fig = ...                                        # any plot worth keeping
    stage.save_plot(fig, "curves")                   # -> base_dir/report/05_pretrain-curves.png

    # the last cell
    stage.finish("Base model pretraining", metrics, notes="...")

start_stage starts the stage's clock, joins the process group when torchrun started this
kernel as one rank of several, and collects the parameters as a dict by the names the
notebook's own `parameters` cell declares (with papermill's or a learner's values, whatever
they are now): the cell is the single list of them, never retyped. finish writes the
stage's report section (its metrics plus wall_time_s, and every plot saved through
save_plot), then leaves the process group. Only rank 0 writes; every rank may call both.
"""
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanochat import common, report
from nanochat.common import STAGE_NAME, DistInfo, print0
from nanochat.stages import NOTEBOOKS_DIR, declared_parameters


def find_notebook(name: str) -> Path:
    """The notebook file of a stage: in the kernel's folder (Jupyter, papermill and nbval all
    start the kernel next to the notebook), else the course's notebooks/."""
    for folder in (Path.cwd(), NOTEBOOKS_DIR):
        if (folder / f"{name}.ipynb").is_file():
            return folder / f"{name}.ipynb"
    raise FileNotFoundError(f"no {name}.ipynb in {Path.cwd()} or {NOTEBOOKS_DIR}: start_stage(name, ...) "
                            f"takes the notebook's own name, and the kernel runs in the notebook's folder")


@dataclass
class StageRun:
    """One running stage: who we are, where things go, and what gets reported at the end."""
    name: str                         # 05_pretrain
    params: dict                      # the parameters cell's names with their current values
    dist: DistInfo
    started: float = field(default_factory=time.time)
    plots: list = field(default_factory=list)

    @property
    def device(self) -> str:
        return self.dist.device

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def master(self) -> bool:
        return self.dist.is_master

    @property
    def base_dir(self) -> str:
        return common.get_base_dir()

    def elapsed(self) -> float:
        """Seconds since start_stage."""
        return time.time() - self.started

    def plot_path(self, what: str) -> Path:
        """Where the stage keeps a plot: base_dir/report/NN_name-what.png (one naming rule)."""
        return Path(common.report_dir()) / f"{self.name}-{what}.png"

    def save_plot(self, fig, what: str) -> Path:
        """Save a matplotlib figure as one of this stage's report plots (rank 0 only); return its path."""
        path = self.plot_path(what)
        if self.master:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110, bbox_inches="tight")
            if path not in self.plots:
                self.plots.append(path)
        return path

    def finish(self, title: str, metrics: dict, notes: str = "") -> None:
        """Write the report section (metrics + wall_time_s + the saved plots), leave the process group."""
        metrics = {**metrics, "wall_time_s": round(self.elapsed(), 1)}
        path = report.write_section(self.name, title, metrics, self.plots, notes)  # rank 0 writes, the others get None
        print0(f"{self.name} done in {metrics['wall_time_s']:.1f}s; report section {path}:\n{metrics}")
        common.destroy_distributed()  # last: without a process group every process is "rank 0"


def start_stage(name: str, namespace: dict, device: str | None = None) -> StageRun:
    """Begin a stage: start the clock, join the process group, collect the parameters.

    namespace is the notebook's globals(); device "" or None picks the best there is.
    """
    if not STAGE_NAME.match(name):
        raise ValueError(f"stage name {name!r} should be the notebook's name, like '05_pretrain'")
    started = time.time()
    declared = declared_parameters(find_notebook(name))
    missing = [key for key in declared if key not in namespace]
    if missing:
        raise RuntimeError(f"parameters {missing} of {name} are not defined: run the `parameters` cell first")
    params = {key: namespace[key] for key in declared}
    dist = common.init_distributed(device or None)
    print0(f"{name}: {dist.world_size} rank(s) on {dist.device}, base dir {common.get_base_dir()}")
    return StageRun(name=name, params=params, dist=dist, started=started)
