"""A seed group: one trial that trains its configuration with ``seeds`` seeds (study key
``seeds: k``) and reports, per epoch, their mean, so that the searcher and ASHA rank
configurations, not the luck of one seed.

Member i trains with ``seed + i`` and ``data.split_seed + i`` (its model initialisation, labeled
subset and validation split) in ``<run folder>/seed-<i>/``, a run folder of its own that resumes
as any run does. Each member is a Ray actor of its own, in its own bundle of the trial's placement
group: processes, not threads, because a run seeds torch's process-wide generators, and Ray ends
the actors with the trial's process if that is killed. The members run side by side in lockstep,
through files as a Train worker does: a member appends each epoch's report to its
``reports.jsonl`` and waits for the trial's acknowledgement (``tune_ack``); when every member has
reported an epoch, the trial hands Tune their mean (``group_report``) and acknowledges it, or
writes ``stop`` when Tune stopped the trial, so every member stops where the group stopped.

The trial's own run folder holds what the report reads for any trial: ``reports.jsonl`` and
``metrics.jsonl`` (the members' means, epoch by epoch), ``config.yaml`` (member 0's: the config a
final run would use) and, once every member has finished, ``summary.json`` (the means, each beside
its members' values and their 95 % interval)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from diffseg import config as config_mod
from diffseg import durable
from diffseg.intervals import mean_ci
from diffseg.rundir import read_jsonl

SEED_KEYS = ("seed", "data.split_seed")  # what a member changes; never searched in a seed group
MEMBER = "seed-{}"
GROUP_FILE = "group.json"  # in the trial's run folder: the waiting process's pid and the seeds
POLL_S = 0.2


def member_config(cfg, index: int):
    """Member ``index`` of a group whose member 0 is ``cfg``."""
    if index == 0:
        return cfg
    return config_mod.apply_overrides(cfg, {"seed": cfg.seed + index,
                                            "data.split_seed": cfg.data.split_seed + index,
                                            "name": f"{cfg.name}-{MEMBER.format(index)}"})


def tuning_seeds(cfg, seeds: int) -> set[int]:
    """Every seed value (``seed`` or ``data.split_seed``) a group of ``seeds`` members starting at
    ``cfg`` trains with: what a study tuned on, and what final scoring must not reuse."""
    return {v + i for v in (cfg.seed, cfg.data.split_seed) for i in range(seeds)}


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# what the report and the tables show with its spread; the other numbers are only averaged
SPREAD = ("val_", "test_", "pl_cost", "epoch_s", "loss")


def group_report(reports: list[dict]) -> dict:
    """One epoch of the group from its members' reports of that epoch (in member order): every
    numeric metric is the members' mean; the selection metrics (``val_*``, ``test_*``), the loss,
    ``pl_cost`` and ``epoch_s`` also get ``<metric>_seeds`` (the members' values) and
    ``<metric>_ci95`` (the half-width of the 95 % Student-t interval). A member that diverged
    makes the group diverged: the settings are unstable, whatever the other seeds did (their
    reports may then be missing: None)."""
    diverged = [i for i, r in enumerate(reports) if r is not None and r.get("diverged")]
    if diverged:
        first = reports[diverged[0]]
        return dict(first) | {"seeds": len(reports),
                              "diverged_reason": f"seed member {diverged[0]}: {first.get('diverged_reason', '')}"}
    return {"epoch": int(reports[0]["epoch"]), "seeds": len(reports)} | means(
        [{k: v for k, v in r.items() if k != "epoch"} for r in reports], SPREAD)


def means(records: list[dict], spread=("",)) -> dict:
    """The mean of every value that is a number in each record; a key starting with one of
    ``spread`` also gets ``<key>_seeds`` (the records' values, in order) and ``<key>_ci95``."""
    out: dict = {}
    for key in records[0]:
        if not all(_numeric(r.get(key)) for r in records):
            continue
        values = [float(r[key]) for r in records]
        out[key], ci = mean_ci(values)
        if key.startswith(spread):
            out[f"{key}_seeds"], out[f"{key}_ci95"] = values, ci
    return out


def mean_rows(rows_per_member: list[list[dict]]) -> list[dict]:
    """The group's ``metrics.jsonl``: for each (stage, epoch) row every member has, the members'
    mean of each numeric value (their values beside it, as in ``group_report``)."""
    keyed = [{(r.get("stage"), r.get("epoch")): r for r in rows} for rows in rows_per_member]
    out = []
    for key in keyed[0]:
        if not all(key in k for k in keyed):
            continue
        rows = [k[key] for k in keyed]
        merged = {"stage": key[0], "epoch": key[1]} | {k: v for k, v in group_report(rows).items() if k != "epoch"}
        out.append(merged)
    return out


def write_group_files(run_dir: Path, seeds: int) -> None:
    """The group's ``metrics.jsonl`` (rewritten after each epoch) and ``config.yaml`` (member 0's)."""
    members = [run_dir / MEMBER.format(i) for i in range(seeds)]
    rows = mean_rows([read_jsonl(m / "metrics.jsonl") for m in members])
    durable.write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r, default=float) + "\n" for r in rows))
    if (members[0] / "config.yaml").exists() and not (run_dir / "config.yaml").exists():
        shutil.copyfile(members[0] / "config.yaml", run_dir / "config.yaml")


def write_group_summary(run_dir: Path, seeds: int) -> None:
    """The group's ``summary.json`` from its members' (all finished): the members' mean of each
    score, with every member's value and the 95 % interval beside it."""
    members = [json.loads((run_dir / MEMBER.format(i) / "summary.json").read_text()) for i in range(seeds)]
    status = next((m["status"] for m in members if m.get("status") != "complete"), "complete")
    out = {"run_dir": str(run_dir), "status": status, "seeds": seeds, "method": members[0].get("method"),
           "dataset": members[0].get("dataset"), "protocol": members[0].get("protocol"),
           "members": [str(run_dir / MEMBER.format(i)) for i in range(seeds)],
           "wall_s": round(max(float(m.get("wall_s", 0)) for m in members), 1)}
    reason = next((m.get("reason") for m in members if m.get("reason")), None)
    if reason:
        out["reason"] = reason
    for part in ("val", "test"):
        out[part] = means([m.get(part) or {} for m in members])
    durable.write_text(run_dir / "summary.json", json.dumps(out, indent=1))


def next_epoch(members: list[Path], epoch: int) -> list[dict] | None:
    """Every member's report of ``epoch`` (member order), or None while one is missing. A member
    that diverged at or before ``epoch`` ends the group there: its report stands for the epoch,
    and members that have not reported it are None."""
    got, diverged = [], False
    for folder in members:
        reports = {int(r["epoch"]): r for r in read_jsonl(folder / "reports.jsonl")}
        early = [r for e, r in sorted(reports.items()) if e <= epoch and r.get("diverged")]
        diverged = diverged or bool(early)
        got.append(early[0] | {"epoch": epoch} if early else reports.get(epoch))
    return got if diverged or all(r is not None for r in got) else None


def members_ended(refs: list) -> bool:
    """Whether every member actor's run has returned; a member that ended with an error raises
    it here (Tune then restarts the trial, which resumes)."""
    import ray

    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in ready:
        ray.get(ref)  # raises a member's error
    return len(ready) == len(refs)


def lockstep(members: list[Path], first_epoch: int, ended, hand_over, acknowledge) -> None:
    """Gathers the members' reports epoch by epoch from ``first_epoch`` until they have all ended
    (``ended()``);
    ``hand_over(report)`` gives each group epoch to Tune (it raises when Tune stops the trial),
    ``acknowledge(epoch)`` lets every member go on."""
    epoch = first_epoch
    while True:
        got = next_epoch(members, epoch)
        if got is None:
            if ended():  # ended without this epoch: a finished run, nothing left to report
                if next_epoch(members, epoch) is None:
                    return
            time.sleep(POLL_S)
            continue
        report = group_report(got)
        hand_over(report)
        if report.get("diverged"):
            return
        acknowledge(epoch)
        epoch += 1
