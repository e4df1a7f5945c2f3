"""The sandbox: output captured, errors reported, time and memory capped, accidents blocked, files cleaned up."""
import os
import resource
import tempfile
import time

import pytest

from nanochat.execution import execute_code


def test_prints_are_captured():
    result = execute_code("import sys\nprint('hello', 6 * 7)\nprint('careful', file=sys.stderr)")
    assert result.success and result.error is None
    assert result.stdout == "hello 42\n"
    assert result.stderr == "careful\n"
    assert not result.timeout and not result.memory_exceeded


def test_exception_is_reported_with_type_message_and_line():
    result = execute_code("x = 1\nraise ValueError('bad input 42')")
    assert not result.success
    assert result.error == "ValueError: bad input 42"
    assert "raise ValueError('bad input 42')" in result.stderr  # the traceback shows the model's line


def test_exit_codes_and_input():
    assert execute_code("import sys; print('done'); sys.exit(0)").success
    failed = execute_code("import sys; sys.exit(3)")
    assert not failed.success and failed.error == "SystemExit: 3"
    waiting = execute_code("input()", timeout=3)  # no stdin: fails at once instead of waiting forever
    assert not waiting.timeout and waiting.error.startswith("EOFError")


@pytest.mark.parametrize("loop", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_endless_code_times_out_and_the_process_is_gone(loop):
    code = f"import os\nprint(os.getpid(), flush=True)\n{loop}"
    start = time.perf_counter()
    result = execute_code(code, timeout=1.0)
    elapsed = time.perf_counter() - start
    assert result.timeout and not result.success and "timed out" in result.error
    # far below the 60 s (or forever) the code would run: a timeout that never fired fails this,
    # a loaded machine that starts Python slowly does not
    assert elapsed < 20, f"took {elapsed:.1f} s to stop a 1 s timeout"
    child_pid = int(result.stdout.split()[0])
    with pytest.raises(ProcessLookupError):  # killed and reaped: no such process any more
        os.kill(child_pid, 0)


@pytest.mark.parametrize("code", ["x = bytearray(4 * 1024**3)",
                                  "chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))"])
def test_huge_allocation_fails_without_hurting_the_parent(code):
    limit_before = resource.getrlimit(resource.RLIMIT_AS)
    result = execute_code(code, timeout=10, max_memory_mb=128)
    assert not result.success and not result.timeout
    assert result.memory_exceeded and "MemoryError" in result.error
    assert resource.getrlimit(resource.RLIMIT_AS) == limit_before  # the cap was set in the child only
    assert execute_code("print(len(bytearray(10**6)))").stdout == "1000000\n"  # and the next run is fine


def test_dangerous_functions_are_blocked(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "data.txt").write_text("keep me")
    marker = tmp_path / "pwned"
    for code in [f"import os\nos.system('touch {marker}')",
                 f"import subprocess\nsubprocess.run(['touch', '{marker}'])",
                 f"import shutil\nshutil.rmtree('{target}')",
                 f"import os\nos.remove('{target / 'data.txt'}')",
                 "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)"]:
        result = execute_code(code)
        assert not result.success
        assert result.error.startswith("PermissionError") and "disabled" in result.error, result.error
    assert not marker.exists()
    assert (target / "data.txt").read_text() == "keep me"


def test_files_are_written_to_a_temp_dir_that_is_removed():
    code = "import os\nopen('notes.txt', 'w').write('hi')\nprint(os.path.abspath('notes.txt'))"
    result = execute_code(code)
    assert result.success, result.stderr
    path = result.stdout.strip()
    workdir = os.path.dirname(path)
    assert os.path.commonpath([workdir, tempfile.gettempdir()]) == tempfile.gettempdir()
    assert os.path.dirname(path) != os.getcwd()
    assert not os.path.exists(path) and not os.path.exists(workdir)


def test_long_output_is_truncated():
    result = execute_code("print('x' * 100_000)\nprint('y' * 100_000)", max_output_chars=1000)
    assert result.success
    assert len(result.stdout) < 1100 and result.stdout.startswith("x" * 1000)
    assert "truncated" in result.stdout
