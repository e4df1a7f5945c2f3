"""Several nodes, one run: torchrun's static rendezvous for each distributed stage, coordinated by node 0.

    node 0:  nanochat run --profile d32 --nnodes 2 --node-rank 0 --master-addr HOST0 --master-port 29500
    node 1:  nanochat run --profile d32 --nnodes 2 --node-rank 1 --master-addr HOST0 --master-port 29500

What a multi-node run assumes, and checks when it starts: every node sees ONE base dir (a shared
file system), so checkpoints, markers and error files written by one node are there for all.
Node 0's runner opens a small TCP store at MASTER_ADDR:MASTER_PORT; it leaves a random token
both in the store and in the run folder, and every other node must find the same token in its
run folder (else: a clear error, before anything runs). Through the store the nodes also agree
on the plan, and node 0 announces each single-process stage (the tokenizer, the lessons) as it
finishes it: those run on node 0 only, and the others wait. Distributed stage number i meets at
MASTER_PORT + 1 + i. A failed rank leaves its error file in the shared run folder; every node's
runner watches for those and stops its own ranks within seconds.
"""
import json
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from nanochat import common
from nanochat.stages import PipelineError

STORE_TIMEOUT = timedelta(hours=24)  # node 1 waits this long for node 0's single-process stages at most


def free_port() -> int:
    """A TCP port nobody listens on now, for torchrun's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]



@dataclass
class Cluster:
    """Where this runner sits: node `node_rank` of `nnodes`, meeting the others at master_addr:master_port."""
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    nproc_per_node: int | None = None  # overrides the profile's nproc for every distributed stage
    store: object = None

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def is_leader(self) -> bool:
        return self.node_rank == 0

    def validate(self) -> None:
        """Bad flags are a one-line error before anything runs."""
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise PipelineError(f"--node-rank must be in 0..{self.nnodes - 1} for --nnodes {self.nnodes}, "
                                f"got {self.node_rank}")
        if self.nproc_per_node is not None and self.nproc_per_node < 1:
            raise PipelineError(f"--nproc-per-node must be positive, got {self.nproc_per_node}")
        if self.multi_node and not 0 < self.master_port < 65536 - 100:
            raise PipelineError(f"--master-port {self.master_port}: the run uses it and the 100 ports above it")

    def rendezvous_args(self, stage_index: int) -> list[str]:
        """torchrun's node arguments for distributed stage number stage_index."""
        if not self.multi_node:
            return ["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        return ["--nnodes", str(self.nnodes), "--node_rank", str(self.node_rank), "--master_addr", self.master_addr,
                "--master_port", str(self.master_port + 1 + stage_index)]

    def connect(self, run_dir: Path, plan: list[str]) -> None:
        """Open the store, check that every node sees the same run folder, and agree on the plan."""
        from torch.distributed import TCPStore

        try:
            self.store = TCPStore(self.master_addr, self.master_port, self.nnodes, is_master=self.is_leader,
                                  timeout=STORE_TIMEOUT if self.is_leader else timedelta(minutes=10),
                                  wait_for_workers=False)
        except Exception as error:  # noqa: BLE001 - a network error of any kind: say what to check
            raise PipelineError(f"node {self.node_rank} could not reach node 0 at {self.master_addr}:{self.master_port} "
                                f"({error}); start node 0 first, and check the address and that the port is open") from None
        try:
            self._check_shared(run_dir, plan)
        except PipelineError as error:
            self.store.set("abort", f"node {self.node_rank}: {error}")  # the others stop too, instead of waiting
            raise
        self.store.set(f"ready/{self.node_rank}", "1")
        self._wait_all([f"ready/{r}" for r in range(self.nnodes)])

    def _wait_all(self, keys: list[str]) -> None:
        """Wait for the other nodes' keys; stop at once if a node gave up (the store's wait() cannot be told)."""
        while not self.store.check(keys):
            if self.store.check(["abort"]):
                raise PipelineError(f"another node stopped the run: {self.store.get('abort').decode()}")
            time.sleep(0.5)

    def _check_shared(self, run_dir: Path, plan: list[str]) -> None:
        """Node 0 leaves a token in the run folder and the store; every other node must find it in its folder."""
        token_file = run_dir / ".cluster-token"
        if self.is_leader:
            token = uuid.uuid4().hex
            run_dir.mkdir(parents=True, exist_ok=True)
            common.atomic_write(token_file, token)
            self.store.set("token", token)
            self.store.set("plan", json.dumps(plan))
        else:
            token = self.store.get("token").decode()
            if not token_file.is_file() or token_file.read_text() != token:
                raise PipelineError(
                    f"node {self.node_rank} does not see node 0's run folder ({run_dir} has no matching "
                    f".cluster-token): a multi-node run needs one base dir shared by every node (NFS or another "
                    f"shared file system), the same NANOCHAT_BASE_DIR on each")
            leader_plan = json.loads(self.store.get("plan").decode())
            if leader_plan != plan:
                raise PipelineError(f"node {self.node_rank} would run {plan}, node 0 runs {leader_plan}: start every "
                                    f"node with the same command and profile")

    def finished_alone(self, stage_name: str, ok: bool) -> None:
        """Node 0: a single-process stage ended (ok or not); the others may go on, or stop."""
        if self.multi_node:
            self.store.set(f"done/{stage_name}", "ok" if ok else "failed")

    def wait_for_leader(self, stage_name: str) -> None:
        """Nodes 1..N-1: wait until node 0 has run a single-process stage; its failure ends this run too."""
        try:
            self.store.wait([f"done/{stage_name}"], STORE_TIMEOUT)
            outcome = self.store.get(f"done/{stage_name}").decode()
        except Exception as error:  # noqa: BLE001 - node 0's runner is gone (killed, crashed)
            raise PipelineError(f"node 0 went away during {stage_name} ({error}): see node 0's output") from None
        if outcome != "ok":
            raise PipelineError(f"{stage_name} failed on node 0 (it runs there alone): see node 0's output")
