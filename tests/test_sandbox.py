"""The sandbox holds: snippets that try to get out, each in several ways, are contained.

Every attack runs through tests/sandbox_caller.py inside a throwaway PID namespace (see its
docstring), so if the sandbox ever failed, a kill(-1) would end that namespace, not the
machine running the tests. Each test checks the caller and a bystander process survived,
the caller's files, environment and sockets were not reached, nothing was left running,
and the result says what stopped the code. Many snippets first reach past the Python-level
guard (import posix, reload os, un-block ctypes) to show that the kernel is what holds.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from nanochat import execution
from nanochat.execution import SandboxUnavailable, execute_code, isolation_problem
from tests.sandbox_caller import ENV_SECRET, SECRET

CALLER = os.path.join(os.path.dirname(__file__), "sandbox_caller.py")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLACK = 15  # seconds beyond a timeout that a loaded 2-core machine may take to start and stop Python


def _problem():
    problem = isolation_problem()
    if problem and os.environ.get("CI"):
        pytest.fail(f"CI must run the sandbox suite, but: {problem}")  # .ci/run installs bubblewrap
    return problem


pytestmark = pytest.mark.skipif(bool(_problem()) or shutil.which("unshare") is None,
                                reason=f"no kernel sandbox here: {isolation_problem()}")


def attack(code: str, linger: float = 0.5, caller_exits_after: float | None = None, **kwargs) -> tuple[dict, dict]:
    """Run `code` (with {placeholders} for the caller's targets) through the strict sandbox, in a
    PID namespace; check nothing outside was touched; return (ExecutionResult as a dict, report)."""
    job = {"code": textwrap.dedent(code), "kwargs": {"strict": True, **kwargs}, "linger": linger}
    if caller_exits_after is not None:
        job["caller_exits_after"] = caller_exits_after
    namespace = ["unshare", "--pid", "--fork", "--mount-proc"]
    if os.geteuid() != 0:  # unprivileged: a user namespace (keeping our uid) lets us make the PID namespace
        namespace[1:1] = ["--user", "--map-current-user"]
    env = {**os.environ, "PYTHONPATH": REPO}
    run = subprocess.run(namespace + [sys.executable, CALLER, "init"], input=json.dumps(job), capture_output=True,
                         text=True, timeout=180, env=env, cwd=REPO)
    assert run.returncode == 0 and run.stdout.strip(), f"the namespace's init failed: {run.stderr[-2000:]}"
    init = json.loads(run.stdout.strip().splitlines()[-1])
    assert init["left_in_namespace"] == [], f"outlived the call and its caller: {init['left_in_namespace']}"
    if caller_exits_after is not None:
        return {}, init
    assert init["caller_returncode"] == 0, f"the caller was killed or crashed (code {init['caller_returncode']}): {run.stderr[-2000:]}"
    report = json.loads(init["caller_output"].strip().splitlines()[-1])
    result = report["result"]
    assert result["isolated"]
    assert report["bystander_alive"], "a process beside the caller was killed"
    assert report["leftovers"] == [], f"still running after the call returned: {report['leftovers']}"
    assert report["connections"] == 0, "the code connected to a socket of the caller"
    assert report["host_files"] == report["host_files_before"] and report["secret_intact"], report["host_files"]
    assert not report["host_tmp_marker"], "the code wrote into the caller's /tmp"
    seen = result["stdout"] + result["stderr"]
    assert SECRET not in seen and ENV_SECRET not in seen, "the code read the caller's secret"
    return result, report


BYPASS_GUARD = """
    import importlib, os, sys
    importlib.reload(os)  # the guard's stand-ins are replaced by the real functions again
    sys.modules.pop("ctypes", None)
    import ctypes  # un-blocked
    assert os.system.__module__ == "posix" and ctypes.CDLL(None).getpid() > 0
    print("REACHED the real functions", flush=True)
"""


def test_a_harmless_program_runs_and_sees_an_empty_world():
    result, _ = attack("""
        import json, os
        open("/tmp/scratch.txt", "w").write("mine")
        print(json.dumps([os.getcwd(), open("scratch.txt").read(), sorted(os.environ), os.getpid(), sorted(os.listdir("/"))]))
    """)
    assert result["success"], result["stderr"]
    cwd, scratch, env, pid, top = json.loads(result["stdout"])
    assert cwd == "/tmp" and scratch == "mine"  # the private, writable /tmp
    assert env == ["HOME", "LANG", "OMP_NUM_THREADS", "PATH", "PWD", "PYTHONIOENCODING", "TMPDIR"]
    assert pid == 2  # its own PID namespace: pid 1 is the sandbox's init
    assert not {"home", "work", "var", "opt", "srv", "mnt"} & set(top), top


def test_writing_outside_the_private_tmp_fails():
    result, _ = attack(BYPASS_GUARD + """
    import posix
    targets = ["{host_dir}/pwned", "{secret_path}", "{host_tmp_marker}", "/usr/pwned", "/pwned", "/etc/pwned",
               "/dev/shm/pwned", "/dev/pwned", "/proc/pwned", "/proc/sys/vm/swappiness", "/root/pwned"]
    for target in targets:
        try:
            fd = posix.open(target, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC)
            posix.write(fd, b"60")
            posix.close(fd)
            print("WROTE", target)
        except OSError as e:
            print("refused", target, e.strerror)
    os.system("touch {host_dir}/pwned-by-shell; echo x > {secret_path}")
    for make in (lambda: os.mkdir("{host_dir}/dir"), lambda: os.symlink("/tmp", "{host_dir}/link"),
                 lambda: os.rename("{secret_path}", "/tmp/stolen"), lambda: os.unlink("{secret_path}")):
        try:
            make()
            print("CHANGED the host")
        except OSError as e:
            print("refused", e.strerror)
    """)
    assert "REACHED" in result["stdout"], result["stderr"]
    # The caller's /tmp path is writable in there, because that /tmp is the sandbox's own: attack()
    # checks the caller's real /tmp has no such file. Everything else was refused.
    changed = [line for line in result["stdout"].splitlines()
               if line.startswith(("WROTE", "CHANGED")) and "nanochat-sandbox-marker-" not in line]
    assert changed == [], changed


def test_host_files_environment_and_processes_are_out_of_sight():
    result, _ = attack(BYPASS_GUARD + """
    import glob
    for path in ["{secret_path}", "/etc/passwd", "/etc/shadow", "/root/.bashrc", os.path.expanduser("~/.bashrc"),
                 "/work", "/home", "/proc/1/environ", "/proc/self/environ", "/proc/{caller_pid}/environ"]:
        try:
            print("READ", path, open(path, "rb").read()[:300] if os.path.isfile(path) else os.listdir(path))
        except OSError as e:
            print("refused", path, e.strerror)
    print("ENV", dict(os.environ))
    print("PIDS", sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    for pid in glob.glob("/proc/[0-9]*"):
        print(pid, open(pid + "/cmdline", "rb").read()[:80])
    os.system("cat {secret_path}; env; ls /proc")
    """)
    out = result["stdout"]
    assert "REACHED" in out and "ENV" in out
    read = [line for line in out.splitlines() if line.startswith("READ") and not line.startswith("READ /proc/")]
    assert read == [], read  # only its own /proc is there to read; attack() checks no secret appeared
    assert "root:x:0:0" not in out  # nor did the shell find /etc/passwd
    pids = json.loads(out.split("PIDS ", 1)[1].splitlines()[0])
    assert max(pids) < 10, f"the code saw processes beyond its own: {pids}"


def test_no_network_not_even_the_callers_loopback():
    result, _ = attack(BYPASS_GUARD + """
    import socket, urllib.request
    tries = [(socket.AF_INET, ("127.0.0.1", {port})), (socket.AF_INET6, ("::1", {port6})),
             (socket.AF_UNIX, "{unix_path}"), (socket.AF_UNIX, "\\0{abstract_name}")]
    for family, address in tries:
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(2)
            s.connect(address)
            print("CONNECTED", address)
        except OSError as e:
            print("refused", address, e.strerror)
    for url in ["http://127.0.0.1:{port}/", "http://example.com/"]:
        try:
            urllib.request.urlopen(url, timeout=2)
            print("CONNECTED", url)
        except OSError as e:
            print("refused", url, e)
    os.system("getent hosts example.com && echo RESOLVED")
    """)
    assert "REACHED" in result["stdout"] and "refused" in result["stdout"]
    assert "CONNECTED" not in result["stdout"] and "RESOLVED" not in result["stdout"]


# Each bomb counts what it managed to start, says so when the kernel refuses, then keeps the CPU
# busy: the call must come back at the timeout with nothing left running.
COUNTED_BOMB = """
import posix, threading, time
n = 0
try:
    while True:
        START
        n += 1
except (OSError, RuntimeError) as e:
    print("started", n, "then:", e, flush=True)
while True:
    pass
"""
BOMBS = {
    "fork": "if posix.fork() == 0:\n            time.sleep(600)",
    "spawn": "posix.posix_spawn('/usr/bin/sleep', ['sleep', '600'], {{}})",
    "threads": "threading.Thread(target=time.sleep, args=(600,)).start()",
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_a_fork_bomb_is_capped_and_the_call_returns_on_time(kind):
    # memory high enough that the process limit binds first (each thread reserves a stack and a malloc arena)
    result, report = attack(COUNTED_BOMB.replace("START", BOMBS[kind]), timeout=3.0, max_processes=16, max_memory_mb=1024)
    assert result["timeout"] and not result["success"]
    assert report["elapsed"] < 3.0 + SLACK
    assert result["stdout"].startswith("started"), result  # the kernel said no...
    assert int(result["stdout"].split()[1]) < 16, result["stdout"]  # ...before the 16th (threads count too)


def test_a_recursive_fork_bomb_is_contained():
    result, report = attack("import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass",
                            timeout=3.0, max_processes=16)
    assert result["timeout"] and report["elapsed"] < 3.0 + SLACK


def test_a_daemon_does_not_outlive_the_call():
    result, report = attack(BYPASS_GUARD + """
    import posix, signal, time
    if posix.fork() == 0:  # the classic double fork: a new session, the parent gone, ignore hangups
        posix.setsid()
        if posix.fork() == 0:
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(1.0)          # after the call has returned...
            posix.kill(-1, 9)        # ...strike
            time.sleep(600)
        posix._exit(0)
    os.system("nohup sleep 600 >/dev/null 2>&1 &")
    print("left a daemon behind")
    """, linger=2.0)
    assert result["success"] and "left a daemon behind" in result["stdout"]


def test_killing_the_caller_or_everything_visible_reaches_nothing():
    result, _ = attack(BYPASS_GUARD + """
    import posix
    for target in [-1, 1, {bystander_pid}, {caller_pid}, {parent_pid}, posix.getppid()]:
        try:
            posix.kill(target, 9)
            print("signalled", target, flush=True)
        except OSError as e:
            print("refused", target, e.strerror, flush=True)
    libc = ctypes.CDLL(None)
    libc.kill(-1, 9)
    os.system("kill -9 -1")
    print("still here")
    """)
    assert "REACHED" in result["stdout"]  # it may have killed itself (its pid is 2 in there); the caller lived


@pytest.mark.parametrize("hog", ["x = bytearray(4 * 1024**3)",
                                 "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))",
                                 "import mmap\nm = mmap.mmap(-1, 4 * 1024**3)\nm[:] = b'x' * len(m)"],
                         ids=["one", "growing", "mmap"])
def test_memory_is_capped(hog):
    result, _ = attack(hog, timeout=10, max_memory_mb=128)
    assert not result["success"] and not result["timeout"]
    assert result["memory_exceeded"] or "MemoryError" in result["error"] or "Cannot allocate" in result["error"], result


@pytest.mark.parametrize("spin", ["while True:\n    pass",
                                  "import signal\nfor s in (signal.SIGTERM, signal.SIGXCPU, signal.SIGHUP):\n"
                                  "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass",
                                  "import threading\ndef spin():\n    while True:\n        pass\n"
                                  "for _ in range(4):\n    threading.Thread(target=spin).start()\nspin()"],
                         ids=["loop", "ignoring-signals", "threads"])
def test_cpu_is_capped(spin):
    result, report = attack(spin, timeout=2.0)
    assert result["timeout"] and not result["success"]
    assert report["elapsed"] < 2.0 + SLACK


def test_disk_is_capped_in_total_and_per_file():
    result, _ = attack("""
    import os
    for size_mb, name in [(64, "/tmp/big")]:
        try:
            with open(name, "wb") as f:
                for _ in range(size_mb):
                    f.write(b"x" * 2**20)
            print("WROTE", name)
        except OSError as e:
            print("refused", name, e.strerror)
    n = 0
    try:
        while n < 10_000:
            with open(f"/tmp/small-{{n}}", "wb") as f:
                f.write(b"x" * 2**20)
            n += 1
    except OSError as e:
        print("stopped after", n, "MB:", e.strerror)
    """, max_disk_mb=16)
    assert "WROTE" not in result["stdout"]
    stopped = [line for line in result["stdout"].splitlines() if line.startswith("stopped after")]
    assert stopped and int(stopped[0].split()[2]) <= 16, result["stdout"]


@pytest.mark.parametrize("flood", ["print('x' * 10**7)", "import os\nwhile True:\n    os.write(1, b'y' * 65536)",
                                   "import sys\nwhile True:\n    sys.stderr.write('z' * 65536)"],
                         ids=["print", "raw-fd", "stderr"])
def test_output_is_capped(flood):
    result, _ = attack(flood, timeout=2.0, max_output_chars=1000)
    assert len(result["stdout"]) < 1100 and len(result["stderr"]) < 1100
    assert "truncated" in result["stdout"] + result["stderr"]


def test_the_sandbox_dies_with_its_caller():
    _, init = attack("import time\nprint('waiting')\ntime.sleep(600)", timeout=60, caller_exits_after=2.0)
    assert init["caller_returncode"] == 3  # it died mid-call, as planned; attack() checked nothing was left


def test_strict_refuses_without_isolation_and_the_fallback_says_so(monkeypatch):
    monkeypatch.setattr(execution, "isolation_problem", lambda: "bubblewrap is not installed (test)")
    monkeypatch.setattr(execution, "_warned", False)
    with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
        execute_code("print(1)", strict=True)
    with pytest.warns(RuntimeWarning, match="NOT isolated"):
        result = execute_code("print(1)")
    assert result.success and result.stdout == "1\n" and not result.isolated


def test_the_engine_tool_and_humaneval_are_strict(monkeypatch):
    from nanochat.engine import python_tool
    from nanochat.tasks.humaneval import HumanEval
    monkeypatch.setattr(execution, "isolation_problem", lambda: "no namespaces (test)")
    with pytest.raises(SandboxUnavailable):
        python_tool("print(1)")
    conversation = {"messages": [{"role": "user", "content": ""}], "test": "def check(f):\n    assert f() == 1",
                    "entry_point": "f"}
    humaneval = HumanEval.__new__(HumanEval)  # no rows needed to check one program
    humaneval.timeout = 5.0
    with pytest.raises(SandboxUnavailable):
        humaneval.evaluate(conversation, "def f():\n    return 1")
