"""nanochat.notebook: the start and the end every stage notebook shares."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from nanochat import common  # noqa: E402
from nanochat.notebook import start_stage  # noqa: E402


def write_notebook(folder: Path, name: str, parameters: str) -> None:
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": parameters,
            "outputs": [], "execution_count": None}
    (folder / f"{name}.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                                      "nbformat_minor": 5}))


@pytest.fixture
def in_notebook_folder(tmp_path, monkeypatch, base_dir):
    monkeypatch.chdir(tmp_path)  # a kernel runs in its notebook's folder
    write_notebook(tmp_path, "42_demo", "depth = 2\nlr = 0.02\nname = 'x'\n")
    return tmp_path


def test_parameters_come_from_the_cell_with_their_current_values(in_notebook_folder):
    namespace = {"depth": 6, "lr": 0.02, "name": "x", "unrelated": 1}  # depth overridden (papermill, a learner)
    stage = start_stage("42_demo", namespace, device="cpu")
    assert stage.params == {"depth": 6, "lr": 0.02, "name": "x"}
    assert (stage.rank, stage.world_size, stage.master, stage.device) == (0, 1, True, "cpu")


def test_a_parameter_not_yet_defined_is_a_clear_error(in_notebook_folder):
    with pytest.raises(RuntimeError, match=r"parameters \['name'\] of 42_demo are not defined"):
        start_stage("42_demo", {"depth": 2, "lr": 0.1}, device="cpu")
    with pytest.raises(FileNotFoundError, match="no 43_other.ipynb"):
        start_stage("43_other", {}, device="cpu")
    with pytest.raises(ValueError, match="like '05_pretrain'"):
        start_stage("demo", {}, device="cpu")


def test_finish_writes_the_section_with_wall_time_and_the_saved_plots(in_notebook_folder, base_dir):
    stage = start_stage("42_demo", {"depth": 2, "lr": 0.1, "name": "x"}, device="cpu")
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    path = stage.save_plot(fig, "curve")
    assert path == Path(base_dir) / "report" / "42_demo-curve.png" and path.is_file()
    stage.finish("Demo", {"loss": 1.5})
    section = json.loads((Path(common.report_dir()) / "42_demo.json").read_text())
    assert section["metrics"]["loss"] == 1.5 and section["metrics"]["wall_time_s"] >= 0
    assert section["plots"] == ["42_demo-curve.png"] and section["title"] == "Demo"
