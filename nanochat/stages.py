"""The plan of a headless run: profiles, the stages that exist, and their parameters.

A stage is a notebook notebooks/NN_name.ipynb (common.STAGE_NAME); the two digits set the
order. A profile (nanochat/profiles/NAME.toml) says, per stage, how many ranks to start and
which parameters to inject:

    [profile]
    description = "the course on a 2-core CPU"
    hours = 1.0
    cost_usd = 0
    gpus = "none"

    [stages.05_pretrain]
    nproc = 1                 # ranks (torchrun when > 1)
    cell_timeout = 1800       # seconds per cell (optional)
    [stages.05_pretrain.parameters]
    depth = 4                 # any variable of the notebook's `parameters` cell

Everything here is checked before anything runs: a typo in a profile or a -p override
fails in a second, not after hours of compute. Nothing here imports torch.
"""
import ast
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from nanochat.common import STAGE_NAME, tomllib

# Parameters that say how a training stage starts and stores its checkpoints, not what it computes:
# a checkpoint or a complete stage made with other values of these is still the same run.
RESUME_KEYS = ("resume_from_step", "auto_resume", "keep_checkpoints")

PACKAGE_DIR = Path(__file__).resolve().parent
PROFILES_DIR = PACKAGE_DIR / "profiles"
NOTEBOOKS_DIR = PACKAGE_DIR.parent / "notebooks"  # the repo's notebooks/, next to nanochat/
STAGE_KEYS = {"nproc", "parameters", "cell_timeout"}  # what a [stages.NN_name] table may hold


class PipelineError(Exception):
    """Bad input (profile, parameter, stage name): nothing has run. Exit code 2."""


# -----------------------------------------------------------------------------
# A notebook's own parameters

def parameters_cell(notebook: Path) -> str | None:
    """The source of the notebook's cell tagged `parameters` (papermill's convention), or None."""
    try:
        cells = json.loads(Path(notebook).read_text())["cells"]
    except (OSError, ValueError, KeyError) as e:
        raise PipelineError(f"cannot read {notebook} as a notebook: {e}") from None
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) > 1:
        raise PipelineError(f"{notebook} has {len(tagged)} cells tagged `parameters`; a stage has one")
    if not tagged:
        return None
    source = tagged[0]["source"]
    return "".join(source) if isinstance(source, list) else source


def declared_parameters(notebook: Path) -> dict:
    """{name: default} of the notebook's `parameters` cell: one `name = literal` per line.

    This is the one reading of a parameters cell: the runner validates -p overrides and
    profiles against it, and a running notebook (nanochat.notebook) collects its values
    by these names.
    """
    source = parameters_cell(notebook)
    if source is None:
        return {}
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise PipelineError(f"the parameters cell of {notebook} is not valid Python: {e}") from None
    declared = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise PipelineError(f"the parameters cell of {notebook} should hold only `name = value` lines; "
                                f"line {node.lineno} is not one")
        try:
            declared[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            raise PipelineError(f"parameter {node.targets[0].id!r} of {notebook} is not a literal "
                                f"(a number, string, bool, None, list or dict)") from None
    return declared


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
    declared: dict = field(default_factory=dict)  # {name: default} of its parameters cell


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


def type_mismatch(value, default) -> str | None:
    """Why value cannot stand in for the notebook's default (None if it can): the default's type is the contract.

    An int may stand in for a float (3 for 3.0); a default of None accepts anything.
    """
    if default is None:
        return None
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return None
    def a(name: str) -> str:
        return f"an {name}" if name[0] in "aeiou" else f"a {name}"
    return (f"is {a(type(value).__name__)}, but the notebook's default {default!r} is {a(expected.__name__)}"
            + (" (quote a string on the command line: -p 'name=\"text\"')" if expected is str else ""))


def apply_and_validate(stages: list[Stage], overrides, all_stages: list[Stage]) -> None:
    """Inject -p overrides, then check every parameter against the notebook's `parameters` cell.

    papermill only warns about a parameter the notebook does not declare, and the run goes
    on with the default: a misspelled `device_bacth_size` would silently train with the
    wrong batch. Here it is an error naming the stage, the name and the closest valid ones.
    """
    for stage in stages:
        if stage.notebook is not None:
            stage.declared = declared_parameters(stage.notebook)
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
        for key, value in stage.parameters.items():
            if key not in stage.declared:
                valid = sorted(stage.declared) or ["(none: the notebook has no cell tagged `parameters`)"]
                errors.append(f"stage {stage.name}: unknown parameter {key!r}{suggest(key, stage.declared)} "
                              f"(declared in {stage.notebook.name}: {', '.join(valid)})")
            elif problem := type_mismatch(value, stage.declared[key]):
                errors.append(f"stage {stage.name}: {key} = {value!r} {problem}")
    if errors:
        raise PipelineError("parameters rejected, nothing was run:\n  " + "\n  ".join(errors))


def list_profiles() -> None:
    """nanochat profiles: what each profile costs, for choosing one."""
    print(f"{'profile':<10} {'hours':>6} {'cost':>7}  {'gpus':<8} description")
    for path in sorted(PROFILES_DIR.glob("*.toml")):
        meta = load_profile(str(path))["profile"]
        print(f"{path.stem:<10} {meta['hours']:>6} {'$' + str(meta['cost_usd']):>7}  "
              f"{meta['gpus']:<8} {meta['description']}")
