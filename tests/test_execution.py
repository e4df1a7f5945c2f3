"""Running code: output captured, errors reported, time and memory capped, accidents blocked, files
cleaned up -- in both modes, the kernel sandbox and the guarded fallback. (That the sandbox holds
against code that wants out is tests/test_sandbox.py.)"""
import functools
import os
import resource
import tempfile
import time
import uuid

import pytest

from nanochat.execution import execute_code, isolation_problem, run_guarded


@pytest.fixture(params=["isolated", "guarded"])
def mode(request):
    if request.param == "isolated" and isolation_problem():
        pytest.skip(f"no kernel sandbox here: {isolation_problem()}")
    return request.param


@pytest.fixture
def execute(mode):
    """Each test runs against the sandbox (where this machine has one) and the guarded fallback."""
    return functools.partial(execute_code, strict=True) if mode == "isolated" else run_guarded


def test_prints_are_captured(execute):
    result = execute("import sys\nprint('hello', 6 * 7)\nprint('careful', file=sys.stderr)")
    assert result.success and result.error is None
    assert result.stdout == "hello 42\n"
    assert result.stderr == "careful\n"
    assert not result.timeout and not result.memory_exceeded


def test_exception_is_reported_with_type_message_and_line(execute):
    result = execute("x = 1\nraise ValueError('bad input 42')")
    assert not result.success
    assert result.error == "ValueError: bad input 42"
    assert "raise ValueError('bad input 42')" in result.stderr  # the traceback shows the model's line


def test_exit_codes_and_input(execute):
    assert execute("import sys; print('done'); sys.exit(0)").success
    failed = execute("import sys; sys.exit(3)")
    assert not failed.success and failed.error == "SystemExit: 3"
    waiting = execute("input()", timeout=3)  # no stdin: fails at once instead of waiting forever
    assert not waiting.timeout and waiting.error.startswith("EOFError")


@pytest.mark.parametrize("loop", ["while True:\n    pass", "import time\ntime.sleep(60)"])
def test_endless_code_times_out_and_the_process_is_gone(loop, mode, execute):
    code = f"import os\nprint(os.getpid(), flush=True)\n{loop}"
    start = time.perf_counter()
    result = execute(code, timeout=1.0)
    elapsed = time.perf_counter() - start
    assert result.timeout and not result.success and "timed out" in result.error
    # far below the 60 s (or forever) the code would run: a timeout that never fired fails this,
    # a loaded machine that starts Python slowly does not
    assert elapsed < 20, f"took {elapsed:.1f} s to stop a 1 s timeout"
    if mode == "guarded":  # (in the sandbox the pid is its namespace's; test_sandbox checks nothing is left)
        child_pid = int(result.stdout.split()[0])
        with pytest.raises(ProcessLookupError):  # killed and reaped: no such process any more
            os.kill(child_pid, 0)


@pytest.mark.parametrize("code", ["x = bytearray(4 * 1024**3)",
                                  "chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))"])
def test_huge_allocation_fails_without_hurting_the_parent(code, execute):
    limit_before = resource.getrlimit(resource.RLIMIT_AS)
    result = execute(code, timeout=10, max_memory_mb=128)
    assert not result.success and not result.timeout
    assert result.memory_exceeded and "MemoryError" in result.error
    assert resource.getrlimit(resource.RLIMIT_AS) == limit_before  # the cap was set in the child only
    assert execute("print(len(bytearray(10**6)))").stdout == "1000000\n"  # and the next run is fine


def test_dangerous_functions_are_blocked(execute):
    """An accident (deleting, killing, starting a program) fails with a readable error, in both modes.
    The code works on a folder of its own, which in the sandbox is the only kind it can see."""
    make = "import os\nos.makedirs('precious', exist_ok=True)\nopen('precious/data.txt', 'w').write('keep me')\n"
    check = "\nprint(open('precious/data.txt').read())"
    for accident in ["import os\nos.system('rm -r precious')",
                     "import subprocess\nsubprocess.run(['rm', '-r', 'precious'])",
                     "import shutil\nshutil.rmtree('precious')",
                     "import os\nos.remove('precious/data.txt')",
                     "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)"]:
        result = execute(make + "try:\n" + "\n".join("    " + line for line in accident.splitlines())
                         + "\nexcept PermissionError as e:\n    print(e)" + check)
        assert result.success, result.stderr
        refusal, kept = result.stdout.splitlines()
        assert "is disabled in the nanochat sandbox" in refusal and kept == "keep me", result.stdout


def test_files_are_written_to_a_temp_dir_that_is_removed(mode, execute):
    name = f"notes-{uuid.uuid4().hex}.txt"
    code = f"import os\nopen('{name}', 'w').write('hi')\nprint(os.path.abspath('{name}'))"
    result = execute(code)
    assert result.success, result.stderr
    path = result.stdout.strip()
    workdir = os.path.dirname(path)
    assert os.path.commonpath([workdir, tempfile.gettempdir()]) == tempfile.gettempdir()
    assert os.path.dirname(path) != os.getcwd()
    assert not os.path.exists(path)  # gone (the sandbox's /tmp was its own, the fallback's is deleted)
    if mode == "guarded":
        assert not os.path.exists(workdir)


def test_long_output_is_truncated(execute):
    result = execute("print('x' * 100_000)\nprint('y' * 100_000)", max_output_chars=1000)
    assert result.success
    assert len(result.stdout) < 1100 and result.stdout.startswith("x" * 1000)
    assert "truncated" in result.stdout


def test_no_sandbox_is_a_one_line_error_for_the_cli():
    from nanochat.cli import is_user_error
    from nanochat.execution import SandboxUnavailable

    assert is_user_error(SandboxUnavailable("bubblewrap is not installed (...)"))
    assert not is_user_error(RuntimeError("a bug"))
