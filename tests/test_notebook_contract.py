"""The notebook contract (CONTRIBUTING.md), checked on every stage notebook as committed.

What a notebook writes when it runs is checked after nbval has run them all:
tests/test_after_notebooks.py, which the root conftest.py runs last.
"""
import ast
import json
import re
from pathlib import Path

import papermill
import pytest

from nanochat.stages import NOTEBOOKS_DIR, declared_parameters

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def code_sources(notebook: Path) -> list[str]:
    return [source(c) for c in cells(notebook) if c["cell_type"] == "code"]


def calls_print(code: str) -> bool:
    """True if the code calls print() itself (a print inside a string, code for the sandbox, does not count)."""
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
               for node in ast.walk(ast.parse(code)))


def contract_problems(notebook: Path) -> list[str]:
    """Everything a stage notebook breaks of the contract, as sentences (empty: it keeps it)."""
    problems, all_cells, name = [], cells(notebook), notebook.stem
    title = source(all_cells[0]) if all_cells and all_cells[0]["cell_type"] == "markdown" else ""
    if not re.match(rf"# {name[:2]} · ", title):
        problems.append(f"the first cell should be a markdown title '# {name[:2]} · ...'")
    for word in ("**Reads**", "**Writes**", "**Time:**"):
        if word not in title:
            problems.append(f"the title cell should say {word}")
    if not re.search(r"You will learn:\n\n1\. [^\n]+\n(?:   [^\n]+\n)*2\. ", title):
        problems.append("the title cell should list the objectives as 'You will learn:' and a numbered list")
    claim = title.split("\n", 1)[-1].split("You will learn:")[0]
    if len(claim.strip()) < 40:
        problems.append("the title cell should open with a paragraph that makes the notebook's claim")
    headers = [line for c in all_cells if c["cell_type"] == "markdown"
               for line in source(c).split("\n") if line.startswith("## ")]
    lessons = [h for h in headers if h not in ("## Checks and the report", "## What you learned")]
    numbered = [int(m.group(1)) if (m := re.match(r"## (\d+)\. ", h)) else None for h in lessons]
    if numbered != list(range(1, len(lessons) + 1)):
        problems.append(f"the sections should be numbered '## 1. ...', '## 2. ...' in order: {lessons}")
    if headers[-2:] != ["## Checks and the report", "## What you learned"]:
        problems.append(f"the last two sections should be '## Checks and the report', '## What you learned': {headers[-2:]}")
    tagged = [c for c in all_cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{len(tagged)} cells are tagged `parameters`; a stage has exactly one")
    if any(c.get("outputs") or c.get("execution_count") for c in all_cells if c["cell_type"] == "code"):
        problems.append("outputs are committed; strip them")
    code = code_sources(notebook)
    if not any(f'start_stage("{name}", globals()' in text for text in code):
        problems.append(f'no code cell calls start_stage("{name}", globals(), ...)')
    if not code or "stage.finish(" not in code[-1]:
        problems.append("the last code cell should call stage.finish(...)")
    if any(calls_print(text) for text in code):
        problems.append("print( found: use print0 so N ranks do not print N copies")
    if any(re.search(r"report\.write_section|destroy_distributed|init_distributed", text) for text in code):
        problems.append("a notebook leaves the report section and the process group to start_stage/finish")
    ending = source(all_cells[-1]) if all_cells and all_cells[-1]["cell_type"] == "markdown" else ""
    for part in ("## What you learned", "**Next:**", "**Try this**", f"exercises/{name}.ipynb"):
        if part not in ending:
            problems.append(f"the last cell should be the ending (What you learned, Next, Try this, Exercises): no {part}")
    return problems


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_stage_notebook_keeps_the_contract(notebook):
    assert contract_problems(notebook) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_our_reading_of_the_parameters_cell_is_papermills(notebook):
    ours = declared_parameters(notebook)
    theirs = papermill.inspect_notebook(str(notebook))
    assert list(ours) == list(theirs)
    assert ours and all(value is not None or theirs[key]["default"] == "None" for key, value in ours.items())


def test_the_checker_catches_a_broken_notebook(tmp_path):
    nb = json.loads(NOTEBOOKS[0].read_text())
    nb["cells"][0]["source"] = ["# A title without the facts"]
    nb["cells"].insert(1, {"cell_type": "markdown", "metadata": {}, "source": ["## An unnumbered section"]})
    nb["cells"] = [c for c in nb["cells"] if "stage.finish(" not in source(c)]
    nb["cells"].append({"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": 3,
                        "outputs": [{"output_type": "stream", "name": "stdout", "text": "x"}],
                        "source": ["print('hi')"]})
    broken = tmp_path / NOTEBOOKS[0].name
    broken.write_text(json.dumps(nb))
    problems = " | ".join(contract_problems(broken))
    for expected in ("markdown title", "**Reads**", "2 cells are tagged", "outputs are committed",
                     "stage.finish", "print( found", "no ## What you learned", "You will learn:", "numbered", "claim"):
        assert expected in problems
