"""Make exercises/ from solutions/: every solution region becomes a stub for the learner to fill.

A solution notebook marks the code a learner writes:

    def apply_rope(x, cos, sin):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

and the exercise notebook gets, at the same indentation,

        # YOUR CODE HERE
        raise NotImplementedError("apply_rope is yours to write")

Outputs are stripped; everything else is copied as is. Run `python -m nanochat.exercises`
after editing a solution; `--check` only reports which exercises are out of date (the test
suite runs it), so an edit made to exercises/ alone is caught too.
"""
import argparse
import copy
import json
import re
import sys
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
SOLUTIONS_DIR, EXERCISES_DIR = REPO_DIR / "solutions", REPO_DIR / "exercises"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
FUNCTION = re.compile(r"^\s*def (\w+)\(")


def stub_source(source: str, where: str = "a cell") -> str:
    """The source with each solution region replaced by a NotImplementedError stub."""
    out, inside, function = [], None, "this function"
    for line in source.splitlines(keepends=True):
        stripped = line.strip()
        if inside is None and (m := FUNCTION.match(line)):
            function = m.group(1)
        if stripped == BEGIN:
            if inside is not None:
                raise ValueError(f"{where}: {BEGIN} inside another solution region")
            inside = line[:len(line) - len(line.lstrip())]
            out += [f"{inside}# YOUR CODE HERE\n", f'{inside}raise NotImplementedError("{function} is yours to write")\n']
        elif stripped == END:
            if inside is None:
                raise ValueError(f"{where}: {END} without a {BEGIN}")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError(f"{where}: {BEGIN} without an {END}")
    return "".join(out).rstrip("\n")


def exercise_notebook(solution: dict, name: str = "a notebook") -> dict:
    """The exercise version of a solution notebook (a new dict; outputs stripped)."""
    notebook = copy.deepcopy(solution)
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        cell["source"] = stub_source(source, f"{name}, cell {i}").splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
    return notebook


def serialise(notebook: dict) -> str:
    """The notebook as Jupyter writes it (indent 1, sorted keys), so saving it in Jupyter changes nothing."""
    return json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def expected_exercises(solutions_dir: Path = SOLUTIONS_DIR) -> dict[str, str]:
    """{file name: the exercise notebook's text} for every solution notebook."""
    return {path.name: serialise(exercise_notebook(json.loads(path.read_text()), f"solutions/{path.name}"))
            for path in sorted(solutions_dir.glob("[0-9][0-9]_*.ipynb"))}


def out_of_date(solutions_dir: Path = SOLUTIONS_DIR, exercises_dir: Path = EXERCISES_DIR) -> list[str]:
    """The exercise notebooks that are missing, stale or edited, and the ones without a solution."""
    expected = expected_exercises(solutions_dir)
    problems = [f"exercises/{name} differs from what solutions/{name} generates" if (exercises_dir / name).exists()
                else f"exercises/{name} is missing" for name, text in expected.items()
                if not (exercises_dir / name).exists() or (exercises_dir / name).read_text() != text]
    problems += [f"exercises/{p.name} has no solutions/{p.name}" for p in sorted(exercises_dir.glob("*.ipynb"))
                 if p.name not in expected]
    return problems


def write_exercises(solutions_dir: Path = SOLUTIONS_DIR, exercises_dir: Path = EXERCISES_DIR) -> list[str]:
    """Write every exercise notebook that differs; returns the names written."""
    exercises_dir.mkdir(exist_ok=True)
    written = []
    for name, text in expected_exercises(solutions_dir).items():
        path = exercises_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(name)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Generate exercises/ from solutions/ (solution regions become stubs).")
    parser.add_argument("--check", action="store_true", help="only report exercises that are out of date (exit 1)")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = out_of_date()
            for problem in problems:
                print(problem)
            if problems:
                print("Regenerate with: python -m nanochat.exercises (this overwrites exercises/; keep your own work elsewhere)")
            else:
                print("exercises/ is in sync with solutions/")
            return 1 if problems else 0
        written = write_exercises()
    except ValueError as error:  # a broken solution region: say where, in one line
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} exercise notebook(s): {', '.join(written) or 'all up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
