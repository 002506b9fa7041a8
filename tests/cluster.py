"""A real multi-node Ray cluster on this machine for tests: a head and a worker node started
with `ray start`, each with its own temp folder and ports, stopped by their processes' ids."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

VENV_BIN = str(Path(sys.executable).parent)


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class LocalCluster:
    def __init__(self, cpus_per_node: int = 1):
        # a short path: Ray's socket paths have a length limit
        self.base = Path(tempfile.mkdtemp(prefix="dsc", dir="/tmp"))
        for sub in ("home", "tmp"):
            (self.base / sub).mkdir()
        # `python` in a job's entry point must be this environment's, as on a real cluster node
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = env | {"HOME": str(self.base / "home"), "TMPDIR": str(self.base / "tmp"),
                          "PATH": VENV_BIN + os.pathsep + env.get("PATH", "")}
        self.cpus = cpus_per_node
        gcs, dash, *head_ports = free_ports(7)
        self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        # every process of this cluster finds it by address, not by scanning the machine: with a
        # second Ray instance on the machine (the test session's own), Ray Train's placement-group
        # cleaner otherwise fails ("multiple active Ray instances") and a stopped trial's worker
        # never gives its CPU back. A real cluster has one Ray instance per machine.
        self.env["RAY_ADDRESS"] = self.gcs
        self._start("head", ["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--ray-client-server-port={head_ports[4]}"], head_ports[:4])
        self.add_node("worker")

    def _start(self, name: str, args: list[str], ports: list[int]) -> None:
        agent, grpc, runtime_env, metrics = ports
        cmd = [str(Path(VENV_BIN) / "ray"), "start", *args, f"--num-cpus={self.cpus}", "--node-ip-address=127.0.0.1",
               f"--temp-dir={self.base / name}", f"--dashboard-agent-listen-port={agent}",
               f"--dashboard-agent-grpc-port={grpc}", f"--runtime-env-agent-port={runtime_env}",
               f"--metrics-export-port={metrics}"]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"ray start {name} failed:\n{out.stdout}\n{out.stderr}")

    def add_node(self, name: str) -> None:
        self._start(name, [f"--address={self.gcs}"], free_ports(4))

    def pids(self, name: str | None = None) -> list[int]:
        """Processes of one node (its temp folder in their command line, and their children)."""
        marker = str(self.base / name) if name else str(self.base)
        roots = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if marker in " ".join(p.info["cmdline"] or []):
                    roots.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        found = set()
        for p in roots:
            found.add(p.pid)
            try:
                found.update(c.pid for c in p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return sorted(found)

    def kill(self, name: str | None = None) -> int:
        """SIGKILL a node's processes (all nodes' without a name); returns how many."""
        pids = self.pids(name)
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                             for p in pids):
            time.sleep(0.2)
        return len(pids)

    def node_id(self, name: str) -> str:
        """A node's id: the suffix of the port files its raylet writes in its session folder."""
        files = list((self.base / name / "session_latest").glob("dashboard_agent_listen_port_*"))
        return files[0].name.rsplit("_", 1)[1]

    def stop(self) -> None:
        self.kill()
        # nothing left that would make a later ray.init() join this (dead) cluster
        for leftover in self.base.rglob("ray_current_cluster"):
            leftover.unlink()
        shutil.rmtree(self.base, ignore_errors=True)
