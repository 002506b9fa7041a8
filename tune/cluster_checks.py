"""Checks on the Ray cluster a study is about to use, before its folder is made: a trial's
worker fits on one node, and every node can write the study storage."""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from diffseg.config import ConfigError


# what a Ray session's folder needs before its processes start: logs, sockets, port files. With
# less, Ray fails late and misleadingly ("Timed out waiting for file .../gcs_server_port")
MIN_TEMP_FREE = 256 * 2**20


def ray_temp_root() -> Path:
    """Where Ray puts its session folders on this machine (Ray's own rule: RAY_TMPDIR, else
    TMPDIR on Linux, else /tmp)."""
    from ray._common.utils import get_default_system_temp_dir

    return Path(get_default_system_temp_dir())


def check_temp_space(folder: Path | None = None) -> None:
    """Refuses, naming the folder and its free space, a Ray temp folder that is full, missing or
    read-only, before Ray is started (it would time out waiting for a port file instead)."""
    folder = folder or ray_temp_root()
    fix = "set RAY_TMPDIR (or TMPDIR) to a folder with space"
    if not folder.is_dir():
        raise ConfigError(f"Ray's temp folder {folder} does not exist; {fix}")
    free = shutil.disk_usage(folder).free
    if free < MIN_TEMP_FREE:
        raise ConfigError(f"Ray's temp folder {folder} is full ({free / 2**20:.0f} MiB free, Ray needs about "
                          f"{MIN_TEMP_FREE / 2**20:.0f} MiB for its session); free space there or {fix}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"Ray's temp folder {folder} is not writable; {fix}")


def alive_nodes() -> list[dict]:
    return [n for n in ray.nodes() if n.get("Alive")]


def check_worker_fits(cpus: float, gpus: float, workers: int) -> None:
    """A Train worker runs on one node: the largest node must hold one, and the cluster all of a
    trial's (comparing the cluster's totals alone lets a worker bigger than any node pass, and
    it would never be scheduled)."""
    nodes = alive_nodes()
    sizes = [(n["Resources"].get("CPU", 0), n["Resources"].get("GPU", 0)) for n in nodes]
    if not any(c >= cpus and g >= gpus for c, g in sizes):
        shown = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in sizes)
        raise ConfigError(f"one trial worker needs {cpus:g} CPUs and {gpus:g} GPUs on one node "
                          f"(resources in the study), but no node has that (nodes: {shown})")
    total_cpu, total_gpu = sum(c for c, _ in sizes), sum(g for _, g in sizes)
    if workers * cpus > total_cpu or workers * gpus > total_gpu:
        raise ConfigError(f"one trial needs {workers * cpus:g} CPUs and {workers * gpus:g} GPUs "
                          f"(resources in the study), but the cluster has {total_cpu:g} CPUs and {total_gpu:g} GPUs")


@ray.remote(num_cpus=0)
def _probe(folder: str, token: str) -> str:
    """Write, read back and remove a small file in ``folder``; '' on success, else the reason."""
    path = Path(folder) / f".diffseg-probe-{token}"
    try:
        path.write_text(token)
        ok = path.read_text() == token
        path.unlink()
        return "" if ok else "read back something else"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def check_storage(folder: Path) -> None:
    """Every node writes the study storage, or the study is refused: trial run folders, shared
    networks and acknowledgements live there and are read across nodes."""
    token = uuid.uuid4().hex[:8]
    nodes = alive_nodes()
    probes = [_probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
              .remote(str(folder), f"{token}-{i}") for i, n in enumerate(nodes)]
    failed = [(n, why) for n, why in zip(nodes, ray.get(probes, timeout=120)) if why]
    if failed:
        shown = "; ".join(f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]}): {why}" for n, why in failed)
        raise ConfigError(f"the study storage {folder} is not writable from every node ({shown}); give --storage "
                          f"a folder every node mounts")


def free_dead_jobs_placement_groups() -> list[dict]:
    """Removes placement groups whose creator job is dead; returns their bundles.

    Measured here with Ray 2.60: a driver killed while Ray Train held a worker group (or was
    restarting one) leaves that group's placement group CREATED, holding its CPUs for good, and
    after a few kills the next `resume` waits forever for resources. A placement group ID ends in
    its creator job's ID; a dead job's groups serve nobody (its actors died with it)."""
    from ray._private.state import state
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    dead = {job["JobID"] for job in state.job_table() if job.get("IsDead")}
    freed = []
    for pg_id, info in ray.util.placement_group_table().items():
        if info.get("state") in ("CREATED", "PENDING", "RESCHEDULING") and pg_id[-8:] in dead:
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
            freed.append(info.get("bundles", {}))
    return freed
