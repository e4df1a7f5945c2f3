"""The child side of nanochat/execution.py: read the job, cap and guard this process, run the code, report.

Runs as the main program of a fresh interpreter (inside the sandbox, or in the guarded
fallback), so it imports only what it needs from the standard library: every module imported
here is startup time on every tool call.
"""
import json
import os
import resource
import signal
import sys

# Functions an accident could do damage with: delete or move files, kill or start
# processes, change identity or directory. Each is replaced by a function that raises.
# shutil's rmtree/move/chown and all of subprocess go through these (subprocess through
# _posixsubprocess.fork_exec), so patching them here avoids importing those modules up front.
_DISABLED = {
    "os": ["system", "popen", "kill", "killpg", "fork", "forkpty", "putenv", "unsetenv",
           "remove", "unlink", "removedirs", "rmdir", "rename", "renames", "replace", "truncate",
           "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "chdir", "fchdir",
           "setuid", "setgid", "seteuid", "setegid", "setreuid", "setregid",
           "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
           "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
           "posix_spawn", "posix_spawnp"],
    "_posixsubprocess": ["fork_exec"],
}


def _disabled(name: str):
    """A stand-in that fails loudly, so the model's code gets a readable error, not a NoneType call."""
    def refuse(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the nanochat sandbox")
    return refuse


def _limit_resources(max_memory_bytes: int, cpu_seconds: int, max_file_bytes: int, max_processes: int) -> None:
    """Cap this process: address space, CPU seconds (a backstop to the parent's wall clock), file
    size, no core dumps, and in the sandbox the processes and threads it may have at once."""
    limits = [(resource.RLIMIT_AS, max_memory_bytes), (resource.RLIMIT_CPU, cpu_seconds),
              (resource.RLIMIT_FSIZE, max_file_bytes), (resource.RLIMIT_CORE, 0)]
    if max_processes:  # counted per user in the sandbox's own user namespace (outside it, it would be all of ours)
        limits.append((resource.RLIMIT_NPROC, max_processes))
    for kind, value in limits:
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):  # e.g. macOS refuses RLIMIT_AS: run with what we could set
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file then raises OSError instead of killing


def _reliability_guard() -> None:
    """Disable the dangerous functions listed in _DISABLED (an accident guard, not a jail)."""
    import _posixsubprocess
    import builtins
    modules = {"os": os, "_posixsubprocess": _posixsubprocess}
    for module_name, names in _DISABLED.items():
        for name in names:
            if hasattr(modules[module_name], name):
                shown = "subprocess" if module_name == "_posixsubprocess" else f"{module_name}.{name}"
                setattr(modules[module_name], name, _disabled(shown))
    builtins.help = _disabled("help")  # help() would start a pager
    for blocked in ("ctypes", "resource", "psutil", "tkinter", "multiprocessing"):
        sys.modules[blocked] = None  # `import ctypes` now raises ImportError


def _child_main() -> None:
    """Read the job from stdin, limit and guard this process, run the code, report on the status fd."""
    job = json.loads(sys.stdin.read())
    status_fd = job["status_fd"]
    os.closerange(3, status_fd)  # whatever else was inherited (bwrap's user-namespace fd) is not the code's
    os.closerange(status_fd + 1, 1 << 16)
    os.set_inheritable(status_fd, False)  # a process the code starts must not hold our report open
    write_status = os.write  # keep our own handle before the guard replaces things
    _limit_resources(job["max_memory_bytes"], job["cpu_seconds"], job["max_file_bytes"], job["max_processes"])
    _reliability_guard()
    status = {"error": None, "memory_exceeded": False}
    try:
        exec(compile(job["code"], "<model code>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except MemoryError:
        status = {"error": "MemoryError: the code used more memory than the sandbox allows", "memory_exceeded": True}
    except SystemExit as e:  # sys.exit(0) is a clean finish; any other code is a failure
        if e.code not in (None, 0):
            status["error"] = f"SystemExit: {e.code}"
    except BaseException as e:
        status["error"] = f"{type(e).__name__}: {e}"
        import linecache  # imported only now: ~10 ms of startup that a call without an error need not pay
        import traceback
        lines = job["code"].splitlines(keepends=True)
        linecache.cache["<model code>"] = (len(job["code"]), None, lines, "<model code>")  # tracebacks show the lines
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # from the model's code down, not this runner
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    write_status(status_fd, json.dumps(status).encode())
    os._exit(0)  # skip atexit handlers and non-daemon threads the code may have left running


if __name__ == "__main__":
    _child_main()
