"""Run model-written Python in a separate process, with a time limit, a memory cap and a guard.

Used by the HumanEval evaluation (run a completion against its tests) and by the Engine's
Python tool. Each call:
  1. makes a fresh temporary directory and starts a new Python interpreter in it
     (`python -I`: isolated mode, no PYTHON* variables, no user site-packages);
  2. the child caps its own memory (RLIMIT_AS), CPU time and file sizes, disables the
     functions that delete files, kill processes or start programs (the "reliability
     guard"), then exec()s the code;
  3. the parent keeps the first max_output_chars of stdout/stderr, kills the whole process
     group if the wall-clock timeout passes, and deletes the directory.

THIS IS NOT A SECURITY BOUNDARY. The guard only stops honest accidents: a model that
writes `shutil.rmtree(".")` or `os.system("rm ...")` while solving a puzzle. Code that
wants out can get out (re-importing a patched module, reading any file, the network).
To run code from people or models you do not trust, run this inside a container or VM
with no network and no access to anything you care about.

Linux and macOS only (it needs the `resource` module and fd passing; macOS does not
enforce RLIMIT_AS, so there the memory cap is best-effort). This file imports
only the standard library: the parent runs it as the child's main program.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

try:
    import resource  # Unix only
except ImportError:  # pragma: no cover - Windows
    resource = None


@dataclass
class ExecutionResult:
    """What happened when the code ran. success means it finished without an exception in time."""
    success: bool
    stdout: str
    stderr: str
    error: str | None = None        # "ZeroDivisionError: division by zero", "timed out after 5.0 s", ...
    timeout: bool = False           # killed because the wall-clock limit passed
    memory_exceeded: bool = False   # a MemoryError under the memory cap


def execute_code(code: str, timeout: float = 5.0, max_memory_mb: int = 256,
                 max_output_chars: int = 10_000) -> ExecutionResult:
    """Run `code` in a fresh interpreter in a throwaway directory and report what happened."""
    if resource is None:
        raise RuntimeError("execute_code needs the Unix `resource` module (Linux or macOS); on Windows use WSL")
    job = {"code": code, "max_memory_bytes": max_memory_mb * 1024 * 1024,
           "cpu_seconds": int(timeout) + 1, "max_file_bytes": 16 * 1024 * 1024}
    with tempfile.TemporaryDirectory(prefix="nanochat-exec-", ignore_cleanup_errors=True) as workdir:
        status_read, status_write = os.pipe()  # the child reports its outcome here, apart from stdout
        job["status_fd"] = status_write
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": workdir, "TMPDIR": workdir,
               "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
        # start_new_session: the child leads its own process group, so a timeout can kill
        # it and anything it managed to start, in one signal.
        process = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__)], cwd=workdir, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   pass_fds=(status_write,), start_new_session=True)
        os.close(status_write)  # only the child holds the write end now: EOF when it exits
        stdout, stderr = _CappedReader(process.stdout, max_output_chars), _CappedReader(process.stderr, max_output_chars)
        try:
            process.stdin.write(json.dumps(job).encode())
            process.stdin.close()  # EOF: the child's input() gets EOFError instead of hanging
        except BrokenPipeError:  # the child died before reading its job; its stderr says why
            pass
        timed_out = _wait_or_kill(process, timeout)
        status = _read_status(status_read)
        out, err = stdout.text(), stderr.text()
    return _result(status, process.returncode, timed_out, timeout, out, err)


class _CappedReader:
    """Drain a pipe on a thread, keeping only the first `limit` characters (an endless print can't fill RAM)."""

    def __init__(self, pipe, limit: int):
        self.pipe, self.limit = pipe, limit
        self.chunks, self.kept, self.dropped = [], 0, 0
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self):
        # Keep reading after the cap: a child blocked on a full pipe would never finish.
        while chunk := self.pipe.read1(65536):
            room = max(0, 4 * self.limit - self.kept)  # UTF-8 is at most 4 bytes a character
            self.chunks.append(chunk[:room])
            self.kept += len(chunk[:room])
            self.dropped += len(chunk) - len(chunk[:room])
        self.pipe.close()

    def text(self) -> str:
        self.thread.join(timeout=5)
        text = b"".join(self.chunks).decode("utf-8", errors="replace")
        if len(text) > self.limit or self.dropped:
            text = text[:self.limit] + f"\n... [output truncated to {self.limit} characters]"
        return text


def _wait_or_kill(process: subprocess.Popen, timeout: float) -> bool:
    """Wait up to `timeout` seconds; past that, kill the child's whole process group. True if killed."""
    try:
        process.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it finished in the meantime
            pass
        process.wait()  # reap it, so no zombie is left behind
        return True


def _read_status(fd: int) -> dict | None:
    """The child's one-line JSON report, or None if it died before writing it."""
    with os.fdopen(fd, "rb") as pipe:
        data = pipe.read()
    try:
        return json.loads(data) if data else None
    except json.JSONDecodeError:
        return None


def _result(status, returncode, timed_out, timeout, stdout, stderr) -> ExecutionResult:
    """Turn the child's report (or its silence) into an ExecutionResult."""
    if timed_out:
        return ExecutionResult(False, stdout, stderr, f"timed out after {timeout} s", timeout=True)
    if returncode == -signal.SIGXCPU:  # several threads burnt the CPU budget before the wall clock ran out
        return ExecutionResult(False, stdout, stderr, f"used more than {timeout} s of CPU time", timeout=True)
    if status is None:  # killed by a signal (CPU limit, file-size limit, the OOM killer) or a crash
        if returncode is not None and returncode < 0:
            error = f"the process was killed by {signal.Signals(-returncode).name}"
        else:
            error = f"the process exited with code {returncode} before reporting (see stderr)"
        memory = "MemoryError" in stderr
        return ExecutionResult(False, stdout, stderr, error, memory_exceeded=memory)
    return ExecutionResult(status["error"] is None, stdout, stderr, status["error"],
                           memory_exceeded=status["memory_exceeded"])


# ---- everything below runs in the child process

# Functions an accident could do damage with: delete or move files, kill or start
# processes, change identity or directory. Each is replaced by a function that raises.
_DISABLED = {
    "os": ["system", "popen", "kill", "killpg", "fork", "forkpty", "putenv", "unsetenv",
           "remove", "unlink", "removedirs", "rmdir", "rename", "renames", "replace", "truncate",
           "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir",
           "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid",
           "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
           "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
           "posix_spawn", "posix_spawnp"],
    "shutil": ["rmtree", "move", "chown"],
    "subprocess": ["Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"],
}


def _disabled(name: str):
    """A stand-in that fails loudly, so the model's code gets a readable error, not a NoneType call."""
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the nanochat sandbox")
    return refuse


def _limit_resources(max_memory_bytes: int, cpu_seconds: int, max_file_bytes: int) -> None:
    """Cap this process: address space, CPU seconds (a backstop to the parent's wall clock), file size."""
    limits = [(resource.RLIMIT_AS, max_memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
              (resource.RLIMIT_FSIZE, max_file_bytes)]
    for kind, value in limits:
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):  # e.g. macOS refuses RLIMIT_AS: run with what we could set
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file then raises OSError instead of killing


def _reliability_guard() -> None:
    """Disable the dangerous functions listed in _DISABLED (an accident guard, not a jail)."""
    import builtins
    import shutil
    import subprocess as subprocess_module
    modules = {"os": os, "shutil": shutil, "subprocess": subprocess_module}
    for module_name, names in _DISABLED.items():
        for name in names:
            if hasattr(modules[module_name], name):
                setattr(modules[module_name], name, _disabled(f"{module_name}.{name}"))
    builtins.help = _disabled("help")  # help() would start a pager
    for blocked in ("ctypes", "resource", "psutil", "tkinter", "multiprocessing"):
        sys.modules[blocked] = None  # `import ctypes` now raises ImportError


def _child_main() -> None:
    """Read the job from stdin, limit and guard this process, run the code, report on the status fd."""
    job = json.loads(sys.stdin.read())
    os.set_inheritable(job["status_fd"], False)  # a process the code starts must not hold our report open
    write_status = os.write  # keep our own handle before the guard replaces things
    _limit_resources(job["max_memory_bytes"], job["cpu_seconds"], job["max_file_bytes"])
    _reliability_guard()
    status = {"error": None, "memory_exceeded": False}
    import linecache
    lines = job["code"].splitlines(keepends=True)
    linecache.cache["<model code>"] = (len(job["code"]), None, lines, "<model code>")  # tracebacks show the lines
    try:
        exec(compile(job["code"], "<model code>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except MemoryError:
        status = {"error": "MemoryError: the code used more memory than the sandbox allows", "memory_exceeded": True}
    except SystemExit as e:  # sys.exit(0) is a clean finish; any other code is a failure
        if e.code not in (None, 0):
            status["error"] = f"SystemExit: {e.code}"
    except BaseException as e:
        status["error"] = f"{type(e).__name__}: {e}"
        import traceback
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the model's code down, not this runner
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    write_status(job["status_fd"], json.dumps(status).encode())
    os._exit(0)  # skip atexit handlers and non-daemon threads the code may have left running


if __name__ == "__main__":
    _child_main()
