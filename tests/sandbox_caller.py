"""The caller of an adversarial sandbox test: run inside a throwaway PID namespace by test_sandbox.py.

    python tests/sandbox_caller.py init  < job.json    # pid 1 of the namespace: starts the caller
    python tests/sandbox_caller.py call  < job.json    # the caller: sets up targets, runs the code

Why a namespace: these snippets try to kill every process they can see. If the sandbox
failed, as root, that would be every process on the machine; here it is only this
namespace. Why a separate init: the kernel shields a namespace's pid 1 from signals sent
inside it, so the caller must not be pid 1, or "the caller survived" would prove nothing.

The caller sets up what the code attacks (a folder with a secret file, a secret in its
environment, TCP, Unix and abstract sockets listening, a bystander process), runs the code
through execute_code, then reports as JSON what the code reached. The init waits for the
caller and reports any process left in the namespace, and whether the caller was killed.
"""
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

SECRET = "the-secret-in-the-callers-file"
ENV_SECRET = "the-secret-in-the-callers-environment"


def namespace_processes(exclude: set[int]) -> list[str]:
    """Command lines of the live processes in this PID namespace, apart from `exclude` (this is a
    fresh /proc; zombies, dead and waiting for their parent to read their status, do not count)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    found.append(f.read().replace(b"\0", b" ").decode(errors="replace").strip() or f"[{entry}]")
            except OSError:  # it exited while we looked
                pass
    return [cmd for cmd in found if cmd]


class Listener:
    """A socket that counts the connections it accepts."""

    def __init__(self, family, address):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family != socket.AF_UNIX:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(address)
        self.sock.listen(16)
        self.address = self.sock.getsockname()
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()


def call(job: dict) -> dict:
    """Set up the targets, run the attack through execute_code, report what it reached."""
    from nanochat.execution import execute_code

    host_dir = tempfile.mkdtemp(prefix="nanochat-caller-")
    secret_path = os.path.join(host_dir, "secret.txt")
    with open(secret_path, "w") as f:
        f.write(SECRET)
    os.environ["NANOCHAT_TEST_SECRET"] = ENV_SECRET
    host_tmp_marker = os.path.join(tempfile.gettempdir(), f"nanochat-sandbox-marker-{uuid.uuid4().hex}")
    tcp = Listener(socket.AF_INET, ("0.0.0.0", 0))
    tcp6 = Listener(socket.AF_INET6, ("::1", 0))
    unix = Listener(socket.AF_UNIX, os.path.join(host_dir, "socket"))
    abstract = Listener(socket.AF_UNIX, f"\0nanochat-sandbox-{os.getpid()}")
    bystander = subprocess.Popen(["sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = sorted(os.listdir(host_dir))
    fields = dict(host_dir=host_dir, secret_path=secret_path, host_tmp_marker=host_tmp_marker,
                  port=tcp.address[1], port6=tcp6.address[1], unix_path=unix.address,
                  abstract_name=abstract.address[1:].decode() if isinstance(abstract.address, bytes) else abstract.address[1:],
                  caller_pid=os.getpid(), bystander_pid=bystander.pid, parent_pid=os.getppid())
    code = job["code"].format(**fields)
    if "caller_exits_after" in job:  # the caller dies mid-call: does the sandbox die with it?
        bystander.kill()  # (init would count it as left behind)
        threading.Timer(job["caller_exits_after"], os._exit, args=(3,)).start()
    start = time.perf_counter()
    result = execute_code(code, **job.get("kwargs", {}))
    elapsed = time.perf_counter() - start
    time.sleep(job.get("linger", 0.5))  # a daemon would still be here; a delayed attack would have fired
    leftovers = namespace_processes({1, os.getpid(), bystander.pid})
    report = {"result": dataclasses.asdict(result), "elapsed": elapsed, "leftovers": leftovers,
              "bystander_alive": bystander.poll() is None,
              "connections": tcp.accepted + tcp6.accepted + unix.accepted + abstract.accepted,
              "host_files": sorted(os.listdir(host_dir)), "host_files_before": before,
              "secret_intact": open(secret_path).read() == SECRET,
              "host_tmp_marker": os.path.exists(host_tmp_marker), "fields": fields}
    bystander.kill()
    bystander.wait()
    shutil.rmtree(host_dir, ignore_errors=True)
    if report["host_tmp_marker"]:
        os.remove(host_tmp_marker)
    return report


def init(job_text: str) -> dict:
    """As pid 1: run the caller, wait for it, report how it ended and what it left behind."""
    caller = subprocess.Popen([sys.executable, __file__, "call"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = caller.communicate(job_text.encode())
    time.sleep(1.0)  # anything the sandbox started that outlived its caller would still be here
    return {"caller_returncode": caller.returncode, "caller_output": out.decode(errors="replace"),
            "left_in_namespace": namespace_processes({1})}


if __name__ == "__main__":
    if sys.argv[1] == "init":
        print(json.dumps(init(sys.stdin.read())))
    else:
        print(json.dumps(call(json.loads(sys.stdin.read()))))
