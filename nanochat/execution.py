"""Run model-written Python in a kernel sandbox: the Engine's Python tool and HumanEval.

Whatever a model writes, the host must not notice. Each call starts a fresh interpreter in
new Linux namespaces, made by bubblewrap (`bwrap`, Debian's `bubblewrap` package):

  user   the code runs as an unprivileged user with no capabilities. As root we first make a
         user namespace whose uid 65534 is the host's `nobody`, so even the kernel's per-user
         process count applies (a uid that is root on the host would be exempt from it, and
         could still write root-owned files such as /proc/sys).
  pid    it sees only its own processes, so kill(-1) reaches nothing outside; when the call
         ends, the namespace's first process exits and the kernel kills all the rest.
  net    only its own loopback: no connection to anything on the host or beyond.
  ipc    no shared memory or semaphores with the host; uts: its own hostname.
  mount  / is an empty read-only tmpfs holding /usr and the interpreter's install (read-only),
         a fresh /proc and a minimal /dev; the one writable place is a private /tmp of
         max_disk_mb, which vanishes with the call. No home, no repository, no data.
The environment is empty apart from PATH, HOME, LANG and PYTHONIOENCODING, and the child dies
if the caller does. Before the code runs, the child caps itself with rlimits: address space
(max_memory_mb), CPU seconds, file size, processes (a fork bomb stops at max_processes; threads
count). The parent adds the wall clock and keeps at most max_output_chars of each stream.

Where that isolation is not available (macOS, no bwrap, a kernel that forbids user namespaces)
execute_code falls back to a guarded subprocess (same limits where the OS enforces them,
Python-level guards against accidents) and warns once, loudly, that the code is NOT isolated;
strict=True refuses to run instead. The Engine's tool and HumanEval pass strict=True on Linux.

The Python-level "reliability guard" (os.system, shutil.rmtree, ... raise PermissionError)
runs in both modes: it turns an honest accident into a readable error. It is not the
boundary; `import posix` walks around it, and the namespaces are what hold. What the code
reports about itself (its exception, its exit status) is still the code's word: hostile code
can lie about its own success, not reach the host.

The child's side (cap, guard, run, report) is nanochat/execution_child.py.
"""
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

try:
    import resource  # Unix only
except ImportError:  # pragma: no cover - Windows
    resource = None

NOBODY = 65534  # the unprivileged uid and gid the code runs as when we are root
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "execution_child.py")  # what the child runs
SANDBOX_CHILD = "/sandbox/execution_child.py"  # where it appears inside the sandbox


class SandboxUnavailable(RuntimeError):
    """strict=True was asked for, and this machine cannot isolate the code."""


@dataclass
class ExecutionResult:
    """What happened when the code ran. success means it finished without an exception in time."""
    success: bool
    stdout: str
    stderr: str
    error: str | None = None        # "ZeroDivisionError: division by zero", "timed out after 5.0 s", ...
    timeout: bool = False           # killed because the wall-clock or CPU limit passed
    memory_exceeded: bool = False   # a MemoryError under the memory cap
    isolated: bool = False          # ran in the namespaces (False: the guarded fallback)


def execute_code(code: str, timeout: float = 5.0, max_memory_mb: int = 256, max_output_chars: int = 10_000,
                 max_disk_mb: int = 16, max_processes: int = 16, strict: bool = False) -> ExecutionResult:
    """Run `code` in a fresh sandboxed interpreter and report what happened (see the module docstring)."""
    problem = isolation_problem()
    if problem is not None:
        if strict:
            raise SandboxUnavailable(f"refusing to run model-written code without isolation: {problem}")
        _warn_not_isolated(problem)
    return _run(code, timeout, max_memory_mb, max_output_chars, max_disk_mb, max_processes, isolated=problem is None)


def run_guarded(code: str, timeout: float = 5.0, max_memory_mb: int = 256, max_output_chars: int = 10_000
                ) -> ExecutionResult:
    """The fallback without namespaces: rlimits and the accident guard only. NOT a security boundary."""
    return _run(code, timeout, max_memory_mb, max_output_chars, max_disk_mb=0, max_processes=0, isolated=False)


@functools.cache
def isolation_problem() -> str | None:
    """Why this machine cannot isolate model code (one line with the fix), or None if it can.

    Checked once per process, by starting a real sandbox: a bwrap too old, or a kernel or
    AppArmor policy that forbids user namespaces, shows up here rather than in a tool call."""
    if not sys.platform.startswith("linux"):
        return f"kernel isolation needs Linux namespaces, and this is {sys.platform}"
    if resource is None or shutil.which("bwrap") is None:
        return "bubblewrap is not installed (Debian/Ubuntu: sudo apt install bubblewrap; Fedora: sudo dnf install bubblewrap)"
    if os.geteuid() == 0 and (shutil.which("unshare") is None or not os.path.exists("/usr/bin/setpriv")):
        return "running as root needs util-linux's unshare and /usr/bin/setpriv (Debian/Ubuntu: apt install util-linux)"
    interpreter = _interpreter()
    if not interpreter.startswith(sys.base_prefix + os.sep) and not interpreter.startswith("/usr/"):
        return f"the interpreter {interpreter} lives outside its installation {sys.base_prefix}"
    try:
        probe = _run("print('ok')", 20.0, 256, 1000, 1, 4, isolated=True)
    except OSError as e:
        return f"bubblewrap could not start: {e}"
    if probe.stdout != "ok\n":
        reason = (probe.stderr.strip().splitlines() or [probe.error or "no output"])[-1]
        return (f"bubblewrap cannot make a sandbox here ({reason}); if user namespaces are restricted "
                f"(Ubuntu 24.04: sysctl kernel.apparmor_restrict_unprivileged_userns=0), allow them")
    return None


_warned = False


def _warn_not_isolated(problem: str) -> None:
    """Say once per process, where it cannot be missed, that model code runs without isolation."""
    global _warned
    if not _warned:
        _warned = True
        message = (f"nanochat.execution: model-written code is NOT isolated on this machine: {problem}. "
                   f"It runs in a plain subprocess that can read your files, use the network and "
                   f"start processes. Pass strict=True to refuse instead.")
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _interpreter() -> str:
    """The real interpreter binary (a venv's python is a symlink to its base installation)."""
    return os.path.realpath(sys.executable)


_CHILD_ENV = {"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}


def _run(code, timeout, max_memory_mb, max_output_chars, max_disk_mb, max_processes, isolated) -> ExecutionResult:
    """Start the child (sandboxed or guarded), hand it the job, wait, collect what it said."""
    if resource is None:
        raise RuntimeError("execute_code needs the Unix `resource` module (Linux or macOS); on Windows use WSL")
    job = {"code": code, "max_memory_bytes": max_memory_mb * 1024 * 1024, "cpu_seconds": int(timeout) + 1,
           "max_file_bytes": 16 * 1024 * 1024, "max_processes": max_processes if isolated else 0}
    with ExitStack() as stack:
        status_read, status_write = os.pipe()  # the child reports its outcome here, apart from stdout
        job["status_fd"] = status_write
        if isolated:
            userns = stack.enter_context(_nobody_user_namespace()) if os.geteuid() == 0 else None
            argv = _sandbox_argv(max_disk_mb, userns)
            cwd, env = "/", {}  # bwrap itself gets no environment: the sandbox's /proc/1/environ is empty
            fds = (status_write,) if userns is None else (status_write, userns)
        else:
            cwd = stack.enter_context(tempfile.TemporaryDirectory(prefix="nanochat-exec-", ignore_cleanup_errors=True))
            argv = [sys.executable, "-I", CHILD]
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": cwd, "TMPDIR": cwd, **_CHILD_ENV}
            fds = (status_write,)
        # start_new_session: the child leads its own process group, so a timeout kills it
        # (and, for bwrap, with --die-with-parent, the whole sandbox) in one signal.
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True)
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
    result = _result(status, process.returncode, timed_out, timeout, out, err)
    result.isolated = isolated
    return result


def _sandbox_argv(max_disk_mb: int, userns: int | None) -> list[str]:
    """The bwrap command line: which namespaces, what the child's filesystem holds, what it runs."""
    if userns is None:  # not root: bwrap makes the user namespace, mapping our own uid
        argv = [shutil.which("bwrap"), "--unshare-user", "--disable-userns"]
    else:
        argv = [shutil.which("bwrap"), "--userns", str(userns)]
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent", "--new-session", "--hostname", "sandbox"]
    # The filesystem: read-only system directories (merged-/usr systems have /bin -> usr/bin etc.)
    argv += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    if os.path.exists("/etc/ld.so.cache"):  # where the dynamic linker finds libc on some distributions
        argv += _parents("/etc/ld.so.cache") + ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefix = sys.base_prefix
    if not prefix.startswith("/usr/") and prefix != "/usr":  # e.g. ~/.pyenv/versions/3.11.7, read-only
        argv += _parents(prefix) + ["--ro-bind", prefix, prefix]
        for site in _site_packages(prefix):  # the standard library is all the code may import
            argv += ["--tmpfs", site, "--remount-ro", site]
    argv += _parents(SANDBOX_CHILD) + ["--ro-bind", CHILD, SANDBOX_CHILD,
             "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev",
             "--perms", "1777", "--size", str(max_disk_mb * 1024 * 1024), "--tmpfs", "/tmp",
             "--remount-ro", "/", "--chdir", "/tmp"]
    for name, value in {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", **_CHILD_ENV}.items():
        argv += ["--setenv", name, value]
    if userns is not None:  # bwrap ran as the namespace's root to mount; the code runs as nobody, no capabilities
        argv += ["/usr/bin/setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--"]
    return argv + [_interpreter(), "-I", "-S", SANDBOX_CHILD]


def _parents(path: str) -> list[str]:
    """Make the folders above a mount point traversable (bwrap would copy the host's modes, e.g. /root's 0700)."""
    parents, folder = [], os.path.dirname(path)
    while folder != "/":
        parents.insert(0, folder)
        folder = os.path.dirname(folder)
    return [arg for folder in parents for arg in ("--perms", "0755", "--dir", folder)]


def _site_packages(prefix: str) -> list[str]:
    """The installation's site-packages folders (hidden from the sandbox)."""
    lib = os.path.join(prefix, "lib")
    found = []
    for name in os.listdir(lib) if os.path.isdir(lib) else []:
        site = os.path.join(lib, name, "site-packages")
        if name.startswith("python") and os.path.isdir(site):
            found.append(site)
    return found


@contextmanager
def _nobody_user_namespace():
    """(As root) an open user namespace mapping uid/gid 0 -> 0 and 65534 -> 65534 on the host.

    bwrap needs to be someone who can read root's files to set up the mounts (uid 0 in the
    namespace); setpriv then switches the code to 65534, which is `nobody` on the host, so the
    code owns nothing there and the kernel's per-user process limit is enforced. (bwrap's own
    --unshare-user would map the sandbox to our uid, root, which that limit exempts.)"""
    helper = subprocess.Popen(["unshare", "--user", "sleep", "60"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ours, theirs = os.readlink("/proc/self/ns/user"), f"/proc/{helper.pid}/ns/user"
        deadline = time.monotonic() + 10
        while os.readlink(theirs) == ours:  # until `unshare` has made its namespace and exec'd sleep
            if helper.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"unshare --user failed: {helper.stderr.read().decode().strip()}")
            time.sleep(0.0005)
        for kind in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{kind}", "w") as f:
                f.write(f"0 0 1\n{NOBODY} {NOBODY} 1\n")
        userns = os.open(theirs, os.O_RDONLY)  # the namespace lives on through this fd
    finally:
        helper.kill()
        helper.wait()
    try:
        yield userns
    finally:
        os.close(userns)


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
    """Wait up to `timeout` seconds; past that, kill the child's whole process group. True if killed.

    A timer does the killing so the wait itself blocks (Popen.wait(timeout) polls, sleeping up
    to 50 ms at a time: most of a fast call's latency)."""
    killed = threading.Event()

    def kill():
        if process.poll() is None:
            killed.set()
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:  # it finished in the meantime
                pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    process.wait()  # reaps it, so no zombie is left behind
    timer.cancel()
    return killed.is_set()


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
