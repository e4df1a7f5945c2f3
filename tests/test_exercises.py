"""exercises/ is generated from solutions/ and stays in sync; every exercise's check fails until it is written.

The solutions themselves run under nbval (solutions/ is in testpaths), so every check passes there.
"""
import json
import shutil

import matplotlib
import pytest

from nanochat.checks import CheckFailed
from nanochat.checks.verdict import NOT_WRITTEN
from nanochat.exercises import (BEGIN, END, EXERCISES_DIR, SOLUTIONS_DIR, expected_exercises, main, out_of_date,
                                stub_source, write_exercises)
from nanochat.stages import NOTEBOOKS_DIR

EXERCISES = sorted(EXERCISES_DIR.glob("[0-9][0-9]_*.ipynb"))


def code_cells(path):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_every_lesson_has_exercises_and_solutions():
    lessons = sorted(p.name for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert sorted(p.name for p in SOLUTIONS_DIR.glob("*.ipynb")) == lessons
    assert [p.name for p in EXERCISES] == lessons


def test_exercises_are_in_sync_with_solutions():
    assert out_of_date() == [], "run: python -m nanochat.exercises"


def test_the_generator_is_idempotent(tmp_path):
    assert len(write_exercises(SOLUTIONS_DIR, tmp_path)) == len(EXERCISES)
    first = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert write_exercises(SOLUTIONS_DIR, tmp_path) == []
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == first == expected_exercises()


def test_an_edit_to_one_side_only_is_caught(tmp_path):
    solutions, exercises = tmp_path / "solutions", tmp_path / "exercises"
    shutil.copytree(SOLUTIONS_DIR, solutions)
    shutil.copytree(EXERCISES_DIR, exercises)
    assert out_of_date(solutions, exercises) == []
    edited = exercises / "03_model.ipynb"
    edited.write_text(edited.read_text().replace("RMSNorm", "LayerNorm", 1))
    assert out_of_date(solutions, exercises) == ["exercises/03_model.ipynb differs from what solutions/03_model.ipynb generates"]
    write_exercises(solutions, exercises)
    (solutions / "04_muon.ipynb").write_text((solutions / "04_muon.ipynb").read_text().replace("Muon", "Moon", 1))
    (exercises / "02_data.ipynb").unlink()
    assert out_of_date(solutions, exercises) == ["exercises/02_data.ipynb is missing",
                                                 "exercises/04_muon.ipynb differs from what solutions/04_muon.ipynb generates"]


def test_check_mode_exits_nonzero_when_out_of_date(monkeypatch, capsys):
    assert main(["--check"]) == 0
    monkeypatch.setattr("nanochat.exercises.out_of_date", lambda: ["exercises/01_tokenizer.ipynb is missing"])
    assert main(["--check"]) == 1
    assert "python -m nanochat.exercises" in capsys.readouterr().out


def test_a_solution_region_becomes_a_stub_at_its_indentation():
    source = f"def f(x):\n    \"\"\"Doc.\"\"\"\n    {BEGIN}\n    y = x + 1\n    return y\n    {END}\n\nprint(1)"
    assert stub_source(source) == ('def f(x):\n    """Doc."""\n    # YOUR CODE HERE\n'
                                   '    raise NotImplementedError("f is yours to write")\n\nprint(1)')
    assert stub_source("x = 1") == "x = 1"


@pytest.mark.parametrize("source, problem", [(f"{BEGIN}\nx = 1", "without an"), (f"x = 1\n{END}", "without a"),
                                             (f"{BEGIN}\n{BEGIN}\n{END}", "inside another")])
def test_a_broken_region_is_an_error_that_says_where(source, problem):
    with pytest.raises(ValueError, match=f"solutions/x.ipynb, cell 0: .*{problem}"):
        stub_source(source, "solutions/x.ipynb, cell 0")


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_every_check_in_an_exercise_fails_until_it_is_written(path):
    """Run the exercise notebook as a learner who wrote nothing: each check says 'not written yet'."""
    matplotlib.use("Agg")
    namespace, verdicts = {"__name__": "__main__"}, []
    for i, source in enumerate(code_cells(path)):
        try:
            exec(compile(source, f"{path.name} cell {i}", "exec"), namespace)
        except CheckFailed as failure:
            verdicts.append(str(failure))
        except NotImplementedError:  # a cell that uses a function the learner has not written yet
            pass
    checks = [s for s in code_cells(path) if s.startswith("check_")]
    assert 3 <= len(checks) <= 5, "3 to 5 exercises per notebook"
    assert len(verdicts) == len(checks) and all(NOT_WRITTEN in v for v in verdicts)


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_each_exercise_has_a_solution_region_and_a_check(path):
    solution = code_cells(SOLUTIONS_DIR / path.name)
    regions = [s for s in solution if BEGIN in s]
    assert len(regions) == len([s for s in solution if s.startswith("check_")])
    assert all("raise NotImplementedError" in s for s in code_cells(path) if "YOUR CODE HERE" in s)
    assert not any(BEGIN in s or END in s for s in code_cells(path))


@pytest.mark.parametrize("lesson", sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_each_lesson_ends_by_pointing_to_its_exercises(lesson):
    last = json.loads(lesson.read_text())["cells"][-1]
    assert last["cell_type"] == "markdown" and f"exercises/{lesson.name}" in "".join(last["source"])
