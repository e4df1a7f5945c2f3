"""Runs after nbval has executed the notebooks (the root conftest.py moves this file's tests to
the end of the session): every notebook that ran left its report section behind.
"""
import json
import os
from pathlib import Path

import pytest

from nanochat import common


def test_every_notebook_that_ran_wrote_its_report_section(notebooks_run):
    passed = sorted(name for name, ok in notebooks_run.items() if ok)
    if not passed:
        pytest.skip("no notebook ran to the end in this session (run `python -m pytest` for the whole suite)")
    folder = Path(common.report_dir())
    for name in passed:
        section = folder / f"{name}.json"
        assert section.is_file(), f"{name} ran but wrote no report section {section}"
        written = json.loads(section.read_text())
        assert written["metrics"]["wall_time_s"] > 0, f"{name}'s section has no wall time"
        for plot in written["plots"]:
            assert plot.startswith(f"{name}-") and plot.endswith(".png"), f"{plot}: plots are named NN_name-what.png"
            assert (folder / plot).is_file()
    assert os.environ["NANOCHAT_BASE_DIR"] == common.get_base_dir()
