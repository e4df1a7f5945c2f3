"""The report card: every stage writes a section; one report.md puts them together.

    nanochat report reset [--profile NAME]   # start a new card: header, old sections gone
    nanochat report generate [--run RUN]      # assemble BASE_DIR/report.md, copy it here
(the command line is in nanochat/cli.py; a stage notebook writes its section through
nanochat.notebook's Stage.finish, which calls write_section).

Under the base dir:
    report/00_header.md                the header: commit, date, machine, cost, code size
    report/run_profile.json            the profile the run was started with (for its cost per hour)
    report/NN_name.md, NN_name.json    one section per stage (JSON = what generate reads)
    report/NN_name-plot.png            the section's plots, copied in when it is written
    report.md, report_files/           the assembled card and the images it links to

A stage reports with write_section("05_pretrain", "Base model", {"base/CORE": 0.22,
"base/val_bpb": 0.81, "wall_time_s": 3600.0}, ["loss.png"]). The summary table picks the
metrics it knows from keys named PHASE/METRIC, where PHASE is base, mid, sft or rl and
METRIC one of SUMMARY_METRICS (compared without case or punctuation, so "sft/arc_easy"
fills the ARC-Easy row of the SFT column). CORE measured on n of its tasks is reported
as "base/CORE-20" and shown in the CORE row with that label (ChatCORE-n likewise). A metric
named wall_time_s is summed into the total wall time, and the profile's cost per hour
(its cost_usd / hours, kept by reset) turns that into the run's estimated cost.
"""
import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

from nanochat import common
from nanochat.common import PHASES, STAGE_NAME, tomllib

REPO_DIR = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("nanochat", "rustbpe", "notebooks")  # what "code size" counts
SOURCE_SUFFIXES = {".py", ".rs", ".toml", ".html", ".ipynb"}
SUMMARY_METRICS = ("CORE", "ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval", "SpellingBee", "ChatCORE",
                   "val bpb")
NOT_RUN = "—"  # a phase or metric that was not measured: never shown as 0


def report_dir() -> Path:
    """BASE_DIR/report, where the header and the sections live."""
    path = Path(common.report_dir())
    path.mkdir(parents=True, exist_ok=True)
    return path


def format_value(value) -> str:
    """Numbers the way a reader wants them: 1,234,567 and 0.8123."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1e6:
        return f"{value:.4g}"
    return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"  # 18.2, not 18.2000


def format_duration(seconds: float) -> str:
    """3h51m, 4m12s, 9s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


# -----------------------------------------------------------------------------
# Sections

def render_section(section: dict, image_prefix: str = "") -> str:
    """A section as markdown; image_prefix is where its plots sit relative to the .md."""
    lines = [f"## {section['title']}", "",
             f"_stage {section['stage']}, written {section['written']}_", ""]
    for key, value in section["metrics"].items():
        shown = format_duration(value) if key == "wall_time_s" else format_value(value)
        lines.append(f"- {key}: {shown}")
    for name in section["plots"]:  # stored as NN_name-plot.png; the alt text is "plot"
        alt = Path(name).stem.removeprefix(section["stage"]).lstrip("-_")
        lines += ["", f"![{alt}]({image_prefix}{name})"]
    if section["notes"]:
        lines += ["", section["notes"].strip()]
    return "\n".join(lines).rstrip() + "\n"


def write_section(stage: str, title: str, metrics: dict, plots: list = (), notes: str = "") -> Path | None:
    """Write a stage's section (NN_name.md + NN_name.json) and copy its plots next to it.

    Only rank 0 writes (the others return None), so a notebook may call this on every rank.
    Metrics must be JSON-serialisable (numbers, strings, lists).
    """
    if not common.is_master():
        return None
    if not STAGE_NAME.match(stage):
        raise ValueError(f"stage {stage!r} should be the notebook's name, like '05_pretrain'")
    folder = report_dir()
    copied = []
    for plot in plots:
        plot = Path(plot)
        if not plot.is_file():
            raise FileNotFoundError(f"plot {plot} for report section {stage} does not exist: "
                                    f"save the figure first (fig.savefig(path))")
        name = plot.name if plot.name.startswith(stage) else f"{stage}-{plot.name}"
        if plot.resolve() != (folder / name).resolve():  # already saved in report/: keep it
            shutil.copyfile(plot, folder / name)
        copied.append(name)
    section = {"stage": stage, "title": title, "metrics": dict(metrics), "plots": copied,
               "notes": notes, "written": time.strftime("%Y-%m-%d %H:%M:%S")}
    common.atomic_write(folder / f"{stage}.json", json.dumps(section, indent=2) + "\n")
    path = folder / f"{stage}.md"
    common.atomic_write(path, render_section(section))
    return path


def read_sections() -> list[dict]:
    """Every stage's section, in stage order."""
    return [json.loads(p.read_text()) for p in sorted(report_dir().glob("*.json"))
            if STAGE_NAME.match(p.stem)]


# -----------------------------------------------------------------------------
# The header

def git_commit() -> str:
    """The commit the code ran at, marked when there were uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", "-C", str(REPO_DIR), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (git not available)"
    if not commit:
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def source_text(path: Path) -> str:
    """A source file's text; for a notebook, just its cells' sources (not the JSON around them)."""
    if path.suffix != ".ipynb":
        return path.read_text(errors="replace")
    cells = json.loads(path.read_text()).get("cells", [])
    return "\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells)


def code_size() -> dict:
    """Lines, files and characters of the course's sources: how big is the thing you learn?"""
    files = lines = chars = 0
    for folder in SOURCE_DIRS:
        for path in sorted((REPO_DIR / folder).rglob("*")):
            skip = {"target", "__pycache__", ".ipynb_checkpoints"} & set(path.parts)
            if path.is_file() and path.suffix in SOURCE_SUFFIXES and not skip:
                text = source_text(path)
                files, lines, chars = files + 1, lines + text.count("\n") + 1, chars + len(text)
    return {"files": files, "lines": lines, "chars": chars}


def dependency_count() -> int | None:
    """How many packages pyproject.toml asks for (None when installed without the repo)."""
    path = REPO_DIR / "pyproject.toml"
    if not path.is_file():
        return None
    return len(tomllib.loads(path.read_text()).get("project", {}).get("dependencies", []))


def hardware() -> str:
    """GPU names and count, or CPU only."""
    import torch

    if not torch.cuda.is_available():
        return "CPU only"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} x {names[0]}" if len(set(names)) == 1 else ", ".join(names)


def profile_hardware(meta: dict) -> str:
    """What a profile runs on, in words: "8xH100", or "a CPU" for gpus = "none"."""
    return "a CPU" if str(meta["gpus"]).lower() == "none" else str(meta["gpus"])


def header(profile: dict | None = None) -> str:
    """The header as markdown: what ran, where, at what commit, and what it should cost."""
    import torch

    size = code_size()
    deps = dependency_count()
    lines = ["# nanochat report card", "",
             f"- Date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
             f"- Git commit: {git_commit()}",
             f"- System: {platform.platform()}, Python {platform.python_version()}, "
             f"torch {torch.__version__}, {os.cpu_count()} CPUs",
             f"- GPUs: {hardware()}"]
    if profile:
        meta = profile["profile"]
        lines.append(f"- Profile: {profile.get('name', '?')} ({meta['description']}); expected "
                     f"~{meta['hours']} h on {profile_hardware(meta)}, ~${meta['cost_usd']}")
    lines += [f"- Code: {size['lines']:,} lines, {size['files']} files, {size['chars']:,} characters "
              f"({', '.join(d + '/' for d in SOURCE_DIRS)})",
              f"- Dependencies: {deps if deps is not None else 'unknown'} (pyproject.toml)"]
    return "\n".join(lines) + "\n"


def reset(profile: dict | None = None) -> Path:
    """Start a new report card: forget the old sections and plots, write the header."""
    folder = report_dir()
    for path in folder.iterdir():
        if path.is_file():
            path.unlink()
    path = folder / "00_header.md"
    common.atomic_write(path, header(profile))
    if profile:
        common.atomic_write(folder / "run_profile.json", json.dumps({"name": profile.get("name"), **profile["profile"]}))
    return path


def cost_line(wall_seconds: float | None) -> str:
    """The run's estimated cost: its wall time at the profile's hourly rate (cost_usd / hours)."""
    path = report_dir() / "run_profile.json"
    if wall_seconds is None or not path.is_file():
        return f"Estimated cost: {NOT_RUN} (no profile: `nanochat report reset --profile NAME` records its rate)"
    profile = json.loads(path.read_text())
    rate = profile["cost_usd"] / profile["hours"] if profile["hours"] else 0.0
    return (f"Estimated cost: ${rate * wall_seconds / 3600:,.2f} ({format_duration(wall_seconds)} at the "
            f"{profile['name']} profile's ${rate:,.2f}/h on {profile_hardware(profile)})")


# -----------------------------------------------------------------------------
# Assembling report.md

def metric_key(name: str) -> str:
    """'ARC-Easy', 'arc_easy' and 'Arc Easy' are the same metric."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def summary_table(sections: list[dict]) -> str:
    """Metrics x phases, from the sections' PHASE/METRIC keys; '-' where nothing was measured."""
    found = {}
    for section in sections:  # later stages win: a final eval overrides an earlier estimate
        # CORE on a few items per task is an estimate, and the card says so (± ~0.05 at 8 items).
        items = section["metrics"].get("core_max_per_task", -1)
        subsampled = f", {items} items per task" if items > 0 else ""
        for key, value in section["metrics"].items():
            phase, slash, name = key.partition("/")
            if not (slash and phase.lower() in PHASES):
                continue
            if m := re.fullmatch(r"(core)\d*", metric_key(name)):  # CORE or CORE-n: the CORE row
                found[("core", phase.lower())] = (f"{format_value(value)} ({name}{subsampled})"
                                                  if name != "CORE" or subsampled else format_value(value))
            elif m := re.fullmatch(r"(chatcore)\d+", metric_key(name)):  # on some of its tasks: that row, labelled
                found[(m.group(1), phase.lower())] = f"{format_value(value)} ({name})"
            else:
                found[(metric_key(name), phase.lower())] = format_value(value)
    lines = ["| Metric | " + " | ".join(p.upper() for p in PHASES) + " |",
             "|---" * (len(PHASES) + 1) + "|"]
    for metric in SUMMARY_METRICS:
        cells = [found.get((metric_key(metric), p), NOT_RUN) for p in PHASES]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def total_wall_time(sections: list[dict], run_dir: Path | None) -> float | None:
    """Sum of the stages' wall_time_s; a stage without one counts its run marker's time."""
    times = {s["stage"]: s["metrics"]["wall_time_s"] for s in sections if "wall_time_s" in s["metrics"]}
    if run_dir is not None:
        for marker in sorted(Path(run_dir).glob("*.done")):
            times.setdefault(marker.stem, json.loads(marker.read_text()).get("wall_time_s", 0.0))
    return sum(times.values()) if times else None


def generate(run_dir: Path | str | None = None, copy_to: Path | str | None = ".") -> Path:
    """Assemble BASE_DIR/report.md (header, summary, sections in order) and copy it to copy_to."""
    folder = report_dir()
    sections = read_sections()
    parts = []
    header_path = folder / "00_header.md"
    parts.append(header_path.read_text() if header_path.is_file()
                 else "# nanochat report card\n\n(no header: run `nanochat report reset` at the start of a run)\n")
    wall = total_wall_time(sections, run_dir)
    parts.append("## Summary\n\n" + summary_table(sections) + "\n" +
                 f"Total wall time: {format_duration(wall) if wall is not None else NOT_RUN}\n\n" +
                 cost_line(wall) + "\n")
    parts += [render_section(s, image_prefix="report_files/") for s in sections]
    text = "\n".join(parts)

    out = folder.parent / "report.md"
    images = [folder / p for s in sections for p in s["plots"]]
    for destination in [out.parent] + ([Path(copy_to)] if copy_to is not None else []):
        destination.mkdir(parents=True, exist_ok=True)
        if images:
            (destination / "report_files").mkdir(exist_ok=True)
        for image in images:
            shutil.copyfile(image, destination / "report_files" / image.name)
        common.atomic_write(destination / "report.md", text)
    return out
