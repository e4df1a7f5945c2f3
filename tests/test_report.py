"""The report card: header, per-stage sections, and the assembled report.md."""
import json
import re
from pathlib import Path

import pytest

from nanochat import cli, common, report
from nanochat.stages import load_profile


@pytest.fixture
def plot(tmp_path) -> Path:
    """A stand-in for a saved matplotlib figure."""
    path = tmp_path / "loss.png"
    path.write_bytes(b"\x89PNG fake image bytes")
    return path


def summary_row(text: str, metric: str) -> list[str]:
    """The cells of one row of the summary table."""
    line = next(line for line in text.splitlines() if line.startswith(f"| {metric} |"))
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_reset_writes_the_header(base_dir):
    path = report.reset(load_profile("speedrun"))
    text = path.read_text()
    assert path == Path(base_dir) / "report" / "00_header.md"
    assert re.search(r"- Git commit: \S+", text)
    assert re.search(r"- System: .*Python 3\.\d+.*torch .*\d+ CPUs", text)
    assert "- GPUs: CPU only" in text or re.search(r"- GPUs: \d+ x ", text)
    assert "expected ~4.0 h on 8xH100, ~$100" in text
    files = int(re.search(r"- Code: [\d,]+ lines, (\d+) files, [\d,]+ characters", text).group(1))
    assert files >= 3  # at least nanochat/'s own modules
    import tomllib
    deps = tomllib.loads((report.REPO_DIR / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"- Dependencies: {len(deps)} (pyproject.toml)" in text


def test_sections_and_generate(base_dir, plot, tmp_path, monkeypatch):
    report.reset()
    # written out of order: the card follows the stage numbers, not the writing order
    report.write_section("07_sft", "Supervised finetuning",
                         {"sft/ARC-Easy": 0.3876, "sft/gsm8k": 0.0455, "wall_time_s": 600.0})
    report.write_section("05_pretrain", "Base model pretraining",
                         {"base/CORE": 0.2219, "base/val_bpb": 0.8123, "wall_time_s": 3000.0,
                          "tokens": 11_200_000_000}, plots=[plot], notes="The loss went down.")
    assert json.loads((Path(base_dir) / "report" / "05_pretrain.json").read_text())["metrics"]["base/CORE"] == 0.2219
    assert "- tokens: 11,200,000,000" in (Path(base_dir) / "report" / "05_pretrain.md").read_text()

    here = tmp_path / "here"
    out = report.generate(copy_to=here)
    text = out.read_text()
    assert out == Path(base_dir) / "report.md" and (here / "report.md").read_text() == text
    assert text.startswith("# nanochat report card")
    assert summary_row(text, "CORE") == ["0.2219", "—", "—", "—"]
    assert summary_row(text, "val bpb") == ["0.8123", "—", "—", "—"]
    assert summary_row(text, "ARC-Easy") == ["—", "—", "0.3876", "—"]
    assert summary_row(text, "GSM8K") == ["—", "—", "0.0455", "—"]
    assert summary_row(text, "MMLU") == ["—", "—", "—", "—"]
    assert "Total wall time: 1h00m" in text  # 3000 s + 600 s
    assert text.index("## Summary") < text.index("## Base model pretraining") < text.index("## Supervised finetuning")
    assert "The loss went down." in text
    assert "![loss](report_files/05_pretrain-loss.png)" in text
    for folder in (out.parent, here):  # the image link works next to both copies
        assert (folder / "report_files" / "05_pretrain-loss.png").read_bytes() == plot.read_bytes()


def test_wall_time_falls_back_to_the_run_markers(base_dir, tmp_path):
    report.reset()
    report.write_section("01_tokenizer", "Tokenizer", {"vocab_size": 4096})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "01_tokenizer.done").write_text(json.dumps({"wall_time_s": 75.0}))
    text = report.generate(run_dir=run_dir, copy_to=None).read_text()
    assert "Total wall time: 1m15s" in text


def test_reset_forgets_old_sections(base_dir):
    report.write_section("05_pretrain", "Old run", {"base/CORE": 0.1})
    report.reset()
    assert report.read_sections() == []
    assert "Old run" not in report.generate(copy_to=None).read_text()


def test_a_plot_saved_in_the_report_folder_is_used_in_place(base_dir):
    saved = report.report_dir() / "01_tokenizer_compression.png"
    saved.write_bytes(b"\x89PNG fake")
    report.write_section("01_tokenizer", "Tokenizer", {}, plots=[saved])
    assert sorted(p.name for p in report.report_dir().glob("*.png")) == ["01_tokenizer_compression.png"]
    assert "![compression](report_files/01_tokenizer_compression.png)" in report.generate(copy_to=None).read_text()


def test_only_rank_0_writes(base_dir, monkeypatch):
    monkeypatch.setattr(common, "get_rank", lambda: 1)  # as on rank 1 of a process group
    assert report.write_section("05_pretrain", "Base", {"base/CORE": 0.2}) is None
    assert not (Path(base_dir) / "report" / "05_pretrain.json").exists()


def test_bad_input_is_a_clear_error(base_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="save the figure first"):
        report.write_section("05_pretrain", "Base", {}, plots=[tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="like '05_pretrain'"):
        report.write_section("pretrain", "Base", {})


def test_command_line(base_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "reset", "--profile", "d32"]) == 0
    assert "~41.6 h" in (Path(base_dir) / "report" / "00_header.md").read_text()
    assert cli.main(["report", "generate"]) == 0
    assert (tmp_path / "report.md").read_text().startswith("# nanochat report card")


def test_core_on_some_tasks_fills_the_core_row_with_its_label(base_dir):
    report.reset()
    report.write_section("05_pretrain", "Base model pretraining", {"base/CORE-20": 0.0123})
    text = report.generate(copy_to=None).read_text()
    assert summary_row(text, "CORE") == ["0.0123 (CORE-20)", "—", "—", "—"]


@pytest.mark.parametrize("metrics, shown", [
    ({"base/CORE": 0.2219}, "0.2219"),
    ({"base/CORE": 0.2219, "core_max_per_task": -1}, "0.2219"),
    ({"base/CORE": 0.21, "core_max_per_task": 500}, "0.21 (CORE, 500 items per task)"),
    ({"base/CORE-20": 0.0123, "core_max_per_task": 8}, "0.0123 (CORE-20, 8 items per task)"),
])
def test_core_on_a_few_items_per_task_says_so(base_dir, metrics, shown):
    report.reset()
    report.write_section("05_pretrain", "Base model pretraining", metrics)
    assert summary_row(report.generate(copy_to=None).read_text(), "CORE")[0] == shown


@pytest.mark.parametrize("value, shown", [(18.2, "18.2"), (0.81234, "0.8123"), (2.0, "2"), (0.0, "0"),
                                          (1234567, "1,234,567"), (3.2e9, "3.2e+09"), (True, "True")])
def test_numbers_read_as_a_person_writes_them(value, shown):
    assert report.format_value(value) == shown


def test_a_cpu_profile_says_it_runs_on_a_cpu(base_dir):
    tiny = load_profile("tiny")
    assert f"~{tiny['profile']['hours']} h on a CPU" in report.header(tiny)
    assert "on none" not in report.header(tiny)


def test_every_chat_metric_has_a_row_and_a_partial_chatcore_its_label(base_dir):
    report.reset()
    report.write_section("10_eval", "Evaluation", {"sft/SpellingBee": 0.5, "sft/ChatCORE-2": 0.125, "base/CORE-20": 0.01})
    text = report.generate(copy_to=None).read_text()
    assert summary_row(text, "SpellingBee") == ["—", "—", "0.5", "—"]
    assert summary_row(text, "ChatCORE") == ["—", "—", "0.125 (ChatCORE-2)", "—"]
    assert summary_row(text, "HumanEval") == ["—"] * 4  # not run is a dash, never 0


def test_the_cost_is_the_wall_time_at_the_profiles_rate(base_dir):
    report.reset(load_profile("speedrun"))  # ~$100 for ~4 h: $25/h
    report.write_section("05_pretrain", "Base", {"wall_time_s": 7200.0})
    assert "Estimated cost: $50.00 (2h00m at the speedrun profile's $25.00/h on 8xH100)" in \
        report.generate(copy_to=None).read_text()
    report.reset()
    assert "Estimated cost: —" in report.generate(copy_to=None).read_text()
