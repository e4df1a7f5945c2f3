"""The headless runner: profiles, parameter checks, resume, and real 2-rank torchrun stages.

The stages here are the small fixture notebooks in tests/fixtures/, copied into a temp
notebooks folder per test (--notebooks), so the runner sees only the stages a test wants.
"""
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import papermill
import pytest

from nanochat import cli, stages

FIXTURES = Path(__file__).parent / "fixtures"
PROFILES = sorted(p.stem for p in stages.PROFILES_DIR.glob("*.toml"))
COURSE_NOTEBOOKS = sorted(stages.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def notebooks(tmp_path, *names) -> str:
    """A notebooks folder holding just these fixture stages."""
    folder = tmp_path / "notebooks"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(FIXTURES / f"{name}.ipynb", folder)
    return str(folder)


def profile(tmp_path, stages: dict) -> str:
    """A throwaway profile file: {stage: {"nproc": 2, "parameters": {...}}}."""
    lines = ['[profile]', 'description = "test"', 'hours = 0', 'cost_usd = 0', 'gpus = "none"']
    for stage, table in stages.items():
        lines.append(f"[stages.{stage}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items() if k != "parameters"]
        if "parameters" in table:
            lines.append(f"[stages.{stage}.parameters]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in table["parameters"].items()]
    path = tmp_path / "test_profile.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def stage_log(base_dir) -> list[str]:
    """What the fixture stages 01/02 appended, one line per successful execution."""
    path = Path(base_dir) / "stage_log.txt"
    return path.read_text().splitlines() if path.exists() else []


def leftover_kernels(tag: str) -> list:
    """Jupyter kernels still alive that were started under this test's tag (any parent)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "ipykernel" in " ".join(proc.info["cmdline"] or []) and proc.environ().get("NANOCHAT_TEST_TAG") == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


@pytest.fixture
def tag(monkeypatch) -> str:
    """An environment mark every process of the run inherits, to find orphans by."""
    value = uuid.uuid4().hex
    monkeypatch.setenv("NANOCHAT_TEST_TAG", value)
    return value


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch, base_dir):
    """Run in a temp folder (report.md is copied to the cwd) with a private base dir."""
    monkeypatch.chdir(tmp_path)


# -----------------------------------------------------------------------------
# Profiles

@pytest.mark.parametrize("name", PROFILES)
def test_profile_parses(name):
    prof = stages.load_profile(name)
    meta = prof["profile"]
    assert meta["description"] and meta["hours"] > 0 and meta["cost_usd"] >= 0 and meta["gpus"]
    for stage, table in prof.get("stages", {}).items():
        assert table.get("nproc", 1) >= 1, stage


def test_profiles_are_the_documented_ones():
    assert {"tiny", "cpu", "speedrun", "d26", "d32"} <= set(PROFILES)
    speedrun = stages.load_profile("speedrun")["stages"]["05_pretrain"]
    assert speedrun["nproc"] == 8
    assert speedrun["parameters"] == {"depth": 20, "max_seq_len": 2048, "device_batch_size": 32,
                                      "total_batch_size": 524288, "target_param_data_ratio": 20, "save_every": 1000,
                                      "compile": True, "eval_every": 250, "eval_tokens": 20 * 524288,
                                      "core_metric_every": 2000, "core_max_per_task": 500, "sample_every": 2000,
                                      "keep_checkpoints": 2}
    for name in ("speedrun", "d26", "d32"):  # GPU runs evaluate as nanochat's do, not at the tiny defaults' pace
        params = stages.load_profile(name)["stages"]["05_pretrain"]["parameters"]
        assert params["eval_every"] >= 250 and params["core_max_per_task"] >= 500
        assert stages.load_profile(name)["stages"]["10_eval"]["parameters"]["core_max_per_task"] == -1
    for name in ("cpu", "speedrun", "d26", "d32"):  # long runs checkpoint as they go, so a killed one can continue
        assert stages.load_profile(name)["stages"]["05_pretrain"]["parameters"]["save_every"] > 0
    for name in ("speedrun", "d26", "d32"):  # ...and keep only the last few (~5-16 GB each)
        assert stages.load_profile(name)["stages"]["05_pretrain"]["parameters"]["keep_checkpoints"] == 2
    assert stages.load_profile("d26")["stages"]["05_pretrain"]["parameters"]["device_batch_size"] == 16
    assert stages.load_profile("d32")["stages"]["05_pretrain"]["parameters"]["device_batch_size"] == 8


@pytest.mark.parametrize("notebook", COURSE_NOTEBOOKS, ids=lambda p: p.stem)
def test_profiles_only_set_parameters_the_notebook_declares(notebook):
    """Guards the profiles against a notebook renaming or dropping a parameter."""
    declared = set(papermill.inspect_notebook(str(notebook)))
    defaults = stages.declared_parameters(notebook)
    for name in PROFILES:
        wanted = stages.load_profile(name).get("stages", {}).get(notebook.stem, {}).get("parameters", {})
        unknown = set(wanted) - declared
        assert not unknown, f"profile {name} sets {sorted(unknown)} but {notebook.name} declares {sorted(declared)}"
        for key, value in wanted.items():  # and with the type of the notebook's default
            assert stages.type_mismatch(value, defaults[key]) is None, f"profile {name}: {key} = {value!r}"


def test_bad_profile_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[profile]\ndescription = "x"\nhours = 1\ncost_usd = 0\ngpus = "none"\n'
                    '[stages.05_pretrain]\ndepth = 4\n')
    with pytest.raises(stages.PipelineError, match=r"\[stages.05_pretrain\] has unknown key\(s\) \['depth'\]"):
        stages.load_profile(str(path))
    with pytest.raises(stages.PipelineError, match="Known profiles: cpu, d26"):
        stages.load_profile("speedrn")


# -----------------------------------------------------------------------------
# Planning and parameters (nothing executes in these)

@pytest.mark.parametrize("text, value", [("4", 4), ("3e-4", 3e-4), ("true", True), ("[1, 2]", [1, 2]),
                                         ("null", None), ('"a b"', "a b"), ("hello", "hello"),
                                         ("05_pretrain", "05_pretrain")])
def test_parse_value(text, value):
    assert stages.parse_value(text) == value


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--profile", "--run", "--from", "--only", "--force", "--param", "--notebooks"):
        assert option in out


def test_unknown_parameter_is_rejected_before_anything_runs(tmp_path, base_dir, capsys):
    nbs = notebooks(tmp_path, "01_first", "02_second")
    assert cli.main(["run", "--notebooks", nbs, "-p", "nte=x"]) == 2
    err = capsys.readouterr().err
    assert "no stage in this run declares a parameter 'nte'; did you mean note?" in err
    prof = profile(tmp_path, {"02_second": {"parameters": {"fial": True}}})
    assert cli.main(["run", "--profile", prof, "--notebooks", nbs]) == 2
    err = capsys.readouterr().err
    assert "stage 02_second: unknown parameter 'fial'; did you mean fail?" in err
    assert cli.main(["run", "--notebooks", nbs, "-p", "01_first.fail=true"]) == 2
    assert "stage 01_first: unknown parameter 'fail'" in capsys.readouterr().err
    assert cli.main(["run", "--notebooks", nbs, "-p", "01_frist.note=x"]) == 2
    assert "no stage '01_frist'; did you mean 01_first" in capsys.readouterr().err
    assert stage_log(base_dir) == [] and not (Path(base_dir) / "runs").exists()


@pytest.mark.parametrize("value, default, ok", [(4, 2, True), (3, 0.5, True), (0.5, 3, False), ("abc", 2, False),
                                               (True, 2, False), ("x", None, True), ([1], [0.5], True),
                                               (1, "a", False), (True, False, True)])
def test_a_value_must_have_the_type_of_the_notebooks_default(value, default, ok):
    assert (stages.type_mismatch(value, default) is None) == ok


def test_a_wrongly_typed_value_is_rejected_before_anything_runs(tmp_path, base_dir, capsys):
    nbs = notebooks(tmp_path, "02_second")
    assert cli.main(["run", "--notebooks", nbs, "-p", "sleep_s=abc"]) == 2
    err = capsys.readouterr().err
    assert "02_second: sleep_s = 'abc' is a str, but the notebook's default" in err
    assert not (Path(base_dir) / "runs").exists()


def test_plan_reports_missing_notebooks_and_runs_unlisted_ones(tmp_path, base_dir, capsys):
    nbs = notebooks(tmp_path, "01_first", "02_second")
    prof = profile(tmp_path, {"02_second": {"parameters": {"fail": True}},
                              "07_not_written": {"nproc": 8, "parameters": {"anything": 1}}})
    assert cli.main(["run", "--profile", prof, "--notebooks", nbs, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "01_first         nproc 1  run" in out  # not in the profile: defaults, 1 process
    assert "07_not_written   nproc 8  skip: no notebook yet" in out
    assert not (Path(base_dir) / "runs").exists()  # a dry run writes nothing
    planned = stages.plan_stages(stages.load_profile(prof), Path(nbs))
    stages.apply_and_validate(planned, stages.parse_overrides(["note=hi", "02_second.sleep_s=1"]), planned)
    params = {s.name: s.parameters for s in planned}
    assert params == {"01_first": {"note": "hi"}, "02_second": {"fail": True, "sleep_s": 1},
                      "07_not_written": {"anything": 1}}
    assert [s.name for s in stages.select_stages(planned, "2", None)] == ["02_second", "07_not_written"]
    assert [s.name for s in stages.select_stages(planned, None, "01_first")] == ["01_first"]


# -----------------------------------------------------------------------------
# Executing: single-process stages

def test_interrupted_run_resumes_and_force_reruns(tmp_path, base_dir, capsys):
    nbs = notebooks(tmp_path, "01_first", "02_second")
    run_dir = Path(base_dir) / "runs" / "r"
    # 1: stage 02 fails, like a run that was interrupted there
    assert cli.main(["run", "--run", "r", "--notebooks", nbs, "-p", "fail=true"]) == 1
    err = capsys.readouterr().err
    assert "stage 02_second failed" in err and 'raise RuntimeError("02_second was told to fail")' in err
    assert stage_log(base_dir) == ["01_first first"]
    assert (run_dir / "01_first.done").exists() and not (run_dir / "02_second.done").exists()
    header = Path(base_dir) / "report" / "00_header.md"
    header_written = header.stat().st_mtime_ns
    # 2: the same command without the failure skips 01 and continues with 02
    assert cli.main(["run", "--run", "r", "--notebooks", nbs]) == 0
    out = capsys.readouterr().out
    assert "01_first         nproc 1  skip: complete" in out
    assert stage_log(base_dir) == ["01_first first", "02_second"]
    for note, differs in (("first", False), ("other", True)):  # the default passed explicitly: the same run
        assert cli.main(["run", "--run", "r", "--notebooks", nbs, "--only", "01", "-p", f"note={note}", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "01_first         nproc 1  skip: complete" in out
        assert ("with different parameters" in out) == differs, out
    assert header.stat().st_mtime_ns == header_written  # resuming keeps the report's header
    assert json.loads((run_dir / "02_second.done").read_text())["wall_time_s"] > 0
    assert (tmp_path / "report.md").exists()
    # 3: --force reruns a complete stage, with new parameters
    assert cli.main(["run", "--run", "r", "--notebooks", nbs, "--only", "01", "--force", "-p", "note=again"]) == 0
    assert stage_log(base_dir) == ["01_first first", "02_second", "01_first again"]
    executed = (run_dir / "01_first.ipynb").read_text()
    assert "01_first ran with note again" in executed


def test_a_failed_rerun_keeps_the_last_good_result(tmp_path, base_dir, capsys):
    nbs = notebooks(tmp_path, "02_second")
    run_dir = Path(base_dir) / "runs" / "r"
    assert cli.main(["run", "--run", "r", "--notebooks", nbs]) == 0
    good_marker = (run_dir / "02_second.done").read_text()
    good_notebook = (run_dir / "02_second.ipynb").read_text()
    assert cli.main(["run", "--run", "r", "--notebooks", nbs, "--force", "-p", "fail=true"]) == 1
    assert "the last good run's notebook and marker are kept" in capsys.readouterr().err
    assert (run_dir / "02_second.done").read_text() == good_marker
    assert (run_dir / "02_second.ipynb").read_text() == good_notebook
    assert "02_second was told to fail" in (run_dir / "02_second.failed.ipynb").read_text()
    assert not (run_dir / "02_second.running.ipynb").exists()
    assert cli.main(["run", "--run", "r", "--notebooks", nbs, "--force"]) == 0  # a success clears the failure
    assert not (run_dir / "02_second.failed.ipynb").exists()


def test_cell_timeout_stops_a_hung_cell(tmp_path, base_dir, tag, capsys):
    nbs = notebooks(tmp_path, "02_second")
    t0 = time.time()
    assert cli.main(["run", "--notebooks", nbs, "-p", "sleep_s=300", "--cell-timeout", "2"]) == 1
    assert time.time() - t0 < 120  # the cell alone would sleep 300 s
    assert "CellTimeoutError" in capsys.readouterr().err
    assert not leftover_kernels(tag)


# -----------------------------------------------------------------------------
# Executing: torchrun with 2 CPU ranks (gloo)

@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_run_one_notebook(tmp_path, base_dir, tag, capfd):
    nbs = notebooks(tmp_path, "03_allreduce")
    prof = profile(tmp_path, {"03_allreduce": {"nproc": 2, "parameters": {"scale": 2.0}}})
    assert cli.main(["run", "--profile", prof, "--run", "dist", "--notebooks", nbs,
                          "--cell-timeout", "300", "--dist-timeout", "300"]) == 0
    out = capfd.readouterr().out
    assert "[rank 0] rank 0 of 2 joined" in out and "[rank 1] rank 1 of 2 joined" in out
    run_dir = Path(base_dir) / "runs" / "dist"
    assert sorted(p.name for p in run_dir.iterdir()) == ["03_allreduce.done", "03_allreduce.ipynb"]
    executed = json.loads((run_dir / "03_allreduce.ipynb").read_text())
    outputs = "".join(o.get("text", "") if isinstance(o.get("text", ""), str) else "".join(o["text"])
                      for cell in executed["cells"] for o in cell.get("outputs", []))
    # rank 1's contribution (2 x 2.0) is in rank 0's notebook: both ranks did the work
    assert "contributions=[2.0, 4.0] all_reduce_total=6.0" in outputs
    assert not leftover_kernels(tag)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_failing_rank_fails_the_stage_fast_and_leaves_no_kernels(tmp_path, base_dir, tag, capfd):
    nbs = notebooks(tmp_path, "04_rank1_fails")
    prof = profile(tmp_path, {"04_rank1_fails": {"nproc": 2}})
    timeout = 300  # rank 0 waits in an all_reduce rank 1 never joins: without fail-fast, this long
    t0 = time.time()
    assert cli.main(["run", "--profile", prof, "--run", "fail", "--notebooks", nbs,
                          "--cell-timeout", str(timeout), "--dist-timeout", str(timeout)]) == 1
    finished = time.time()
    err = capfd.readouterr().err
    assert "rank 1 of 2 failed first: ValueError: rank 1 fails on purpose" in err
    assert "raise ValueError(message)" in err  # the failing cell's source
    run_dir = Path(base_dir) / "runs" / "fail"
    failed_at = json.loads((run_dir / "04_rank1_fails.rank1.error").read_text())["time"]
    print(f"stage took {finished - t0:.1f}s; from rank 1's error to the runner's exit {finished - failed_at:.1f}s")
    assert finished - failed_at < 30  # seconds, not the 300 s timeout
    assert finished - t0 < timeout / 2
    assert not (run_dir / "04_rank1_fails.done").exists()
    assert not leftover_kernels(tag)


def test_a_headless_run_saves_progress_bars_that_finish(tmp_path):
    import nbformat

    from nanochat import common, launch

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "from nanochat.common import tqdm\nfor _ in tqdm(range(200), desc='work'):\n"
        "    for _ in tqdm(range(3), desc='inner', leave=False):\n        pass\nprint('finished')")])
    source, output = tmp_path / "bars.ipynb", tmp_path / "bars.out.ipynb"
    nbformat.write(notebook, source)
    launch.execute(source, output, {}, cell_timeout=60)
    outputs = json.loads(output.read_text())["cells"][0]["outputs"]
    assert all(o["output_type"] == "stream" for o in outputs)  # text, not a widget
    bar = "".join("".join(o["text"]) for o in outputs if o["name"] == "stderr")
    frames = [frame.strip() for frame in bar.split("\r") if frame.strip()]
    assert frames[-1].startswith("work: 100%|")  # what a viewer shows: the last frame after the carriage returns
    assert "\x1b[" not in bar  # nested bars draw in place: no cursor movements shown as raw escape codes
    assert common.HEADLESS not in os.environ  # the runner's own environment is left as it was
