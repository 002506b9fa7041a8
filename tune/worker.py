"""Where the diffseg core runs in a study: in each Ray Train worker of a trial of several workers,
or in the trial's own process when it has one worker (``work``).

Ray enters the core only here, as a ``Runtime``: its rank, world size and device, where the data
and cache are (the job's environment when empty), and a report callback that forwards each
epoch's metrics to ``ray.train.report`` (or, in a one-worker trial, straight to Tune).
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from diffseg import config as config_mod
from diffseg import durable
from diffseg.errors import Diverged
from diffseg.loop import fit
from diffseg.methods import method_class
from diffseg.runtime import Runtime

from .paths import REPORTS, WORKER_STARTS
from .stage1 import SharedPretrained, decide

ACK_FILE = "tune_ack"  # the last epoch Tune has taken (written by the trial function)
STOP = "stop"  # written there instead when Tune stops the trial
ACK_TIMEOUT_S = 600  # a driver that vanished must not hold a worker forever


class Stopped(Exception):
    """Tune stopped the trial: the worker ends its run cleanly (not a failure to retry)."""


def train_loop(loop_cfg: dict) -> None:
    """A Ray Train worker's function (trials of several workers)."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    run_dir = Path(loop_cfg["run_dir"])
    log = logger(run_dir, rank)
    ack = run_dir / ACK_FILE if loop_cfg.get("wait_for_ack") else None
    if ack is not None and rank == 0 and ack.exists() and ack.read_text().strip() == STOP:
        ack.unlink()  # a stop meant for an earlier attempt of this trial
    work(loop_cfg, rank, world, _device(), _reporter(rank, ack, log, run_dir), log, "ray train worker")


def run_member(loop_cfg: dict) -> None:
    """A seed-group member's process (tune/group.py): its epoch reports go to its run folder, and
    it waits for the trial's acknowledgement (or stop) as a Train worker does."""
    run_dir = Path(loop_cfg["run_dir"])
    log = logger(run_dir, 0)
    ack = run_dir / ACK_FILE

    def report(metrics: dict) -> None:
        epoch = int(metrics["epoch"])
        if _acked(ack) >= epoch and not metrics.get("diverged"):
            return  # a resumed member re-sends the epoch it restored: Tune has the group's
        record_report(run_dir, metrics)
        if _wait_for_ack(ack, epoch, log) == STOP:
            raise Stopped

    work(loop_cfg, 0, 1, trial_device(), report, log, "seed group member")


def work(loop_cfg: dict, rank: int, world: int, device: torch.device, report, log, where: str) -> None:
    """Run the core on one rank: a Train worker's, or a one-worker trial's own process."""
    cfg = config_mod.from_dict(loop_cfg["config"])
    run_dir = Path(loop_cfg["run_dir"])
    runtime = Runtime(device=device, rank=rank, world_size=world, amp=loop_cfg.get("amp", True),
                      report=report, data_root=loop_cfg["data_root"], cache_dir=loop_cfg["cache_dir"])
    log(f"{where} rank {rank} of {world} on {runtime.device}, {torch.get_num_threads()} torch threads")
    _record_nodes(run_dir, runtime)
    try:
        _run(cfg, run_dir, runtime, loop_cfg, log)
    except Stopped:
        log("stopped by Tune")
    except Diverged as exc:
        # a result, not a failure: the same settings diverge again, so the trial ends (never
        # retried) with the worst objective, which tells the searcher to leave that region
        log(f"DIVERGED: {exc}")
        try:
            runtime.report(diverged_result(exc, loop_cfg.get("objectives", {})))
        except Stopped:
            pass


WORST_MIN = 1e12  # what a diverged trial reports for an objective to minimise (pl_cost, time)


def diverged_result(exc: Diverged, objectives: dict) -> dict:
    return {m: (0.0 if mode == "max" else WORST_MIN) for m, mode in objectives.items()} | {
        "epoch": exc.epoch + 1, "diverged": 1, "diverged_reason": str(exc)}


def _run(cfg, run_dir: Path, runtime: Runtime, loop_cfg: dict, log) -> None:
    if not method_class(cfg.method).stage1_keys:  # nothing to share between trials
        fit(cfg, run_dir, runtime, log=log)
        return
    shared = SharedPretrained(Path(loop_cfg["study_dir"]), cfg, runtime.numerics())
    reused = decide(shared, run_dir, log) if runtime.is_main else False
    reused = runtime.share(reused)
    try:
        fit(cfg, run_dir, runtime, pretrained=shared.path if reused else None, log=log,
            on_pretrained=None if reused or not runtime.is_main else shared.publish)
    finally:
        shared.release()


def _device() -> torch.device:
    if torch.cuda.is_available():
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def trial_device() -> torch.device:
    """A one-worker trial's device: Ray shows the process only the GPUs it was given."""
    return torch.device("cuda") if torch.cuda.is_available() and ray.get_gpu_ids() else torch.device("cpu")


def _record_nodes(run_dir: Path, runtime: Runtime) -> None:
    """Which node each rank runs on, in the run folder (``nodes.json``, rewritten per attempt)."""
    here = {"rank": runtime.rank, "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(), "pid": os.getpid()}
    everyone = [here]
    if runtime.distributed:
        everyone = [None] * runtime.world_size
        dist.all_gather_object(everyone, here)
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "nodes.json").write_text(json.dumps(everyone, indent=1))
        # one line per start of the worker group: Train restarts it inside one Tune trial after a
        # worker dies, which the trial's own start files do not see; the report counts both
        with open(run_dir / WORKER_STARTS, "a") as fh:
            fh.write(json.dumps({"time": time.time(), "ranks": everyone}) + "\n")


def _reporter(rank: int, ack: Path | None, log, run_dir: Path):
    def report(metrics: dict) -> None:
        # an epoch Tune has already taken is not sent again: a resumed attempt re-sends the epoch
        # it restored, which a kill may have stopped before its report (every rank decides alike)
        if ack is not None:
            taken = [_acked(ack) if rank == 0 else -1]
            if dist.is_initialized():
                dist.broadcast_object_list(taken, src=0)
            if taken[0] >= int(metrics["epoch"]):
                return
        if rank == 0 and ack is not None:
            record_report(run_dir, metrics)
        # a barrier: every rank reports each epoch. No checkpoint goes to Ray: the run folder on
        # the study's shared storage holds the only copy, written once per epoch, and a restarted
        # worker group resumes from it
        ray.train.report(metrics)
        if ack is None:
            return
        verdict = _wait_for_ack(ack, int(metrics["epoch"]), log) if rank == 0 else None
        if dist.is_initialized():  # every rank goes on, or every rank ends
            box = [verdict]
            dist.broadcast_object_list(box, src=0)
            verdict = box[0]
        if verdict == STOP:
            raise Stopped
    return report


def record_report(run_dir: Path, metrics: dict) -> None:
    """Appends an epoch's report to the run folder's ``reports.jsonl`` (once per epoch), durably,
    before it is sent: what a resumed trial replays to Tune (see trial.replay)."""
    from diffseg.rundir import read_jsonl

    path = run_dir / REPORTS
    done = read_jsonl(path)
    if any(r.get("epoch") == metrics["epoch"] for r in done):
        return
    if path.exists() and not path.read_bytes().endswith(b"\n"):  # a torn append: rewrite without it
        durable.write_text(path, "".join(json.dumps(r) + "\n" for r in done))
    with open(path, "a") as fh:
        fh.write(json.dumps(metrics, default=float) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _acked(ack: Path) -> int:
    """The last epoch Tune has taken (-1: none yet, or the trial was stopped)."""
    try:
        return int(ack.read_text().strip() or -1)
    except (FileNotFoundError, ValueError):
        return -1


def _wait_for_ack(ack: Path, epoch: int, log) -> str:
    """Until Tune has taken this epoch's result; returns STOP when Tune stopped the trial on it
    (the worker then ends before it trains an epoch nobody will see), else "go"."""
    deadline = time.time() + ACK_TIMEOUT_S
    while time.time() < deadline:
        try:
            text = ack.read_text().strip()
            if text == STOP:
                return STOP
            if int(text or -1) >= epoch:
                return "go"
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.05)
    log(f"no acknowledgement from Tune for epoch {epoch} after {ACK_TIMEOUT_S}s; going on")
    return "go"


def logger(run_dir: Path, rank: int):
    """Rank 0 writes ``train.log`` in the run folder; the study driver prints the per-epoch lines."""
    def log(msg: str) -> None:
        if rank:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "a") as fh:
            fh.write(msg + "\n")
    return log
