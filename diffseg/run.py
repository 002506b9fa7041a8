"""A whole training run: data, stage 1, stage 2, selection, test, summary; resumable."""
from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from . import config as config_mod, evaluate, training
from .data import Splits, prepare
from .diffusion import Diffusion
from .rundir import RunDir, atomic_save
from .runtime import Runtime, local
from .students import build_student, build_teacher
from .visuals import log_images

PAPER_NOTE = "protocol=paper: checkpoint and threshold were selected on the TEST split (original protocol)"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pseudo_label_cost(cfg) -> int:
    """Network evaluations per unlabeled image to make its pseudo-labels in stage 2: the first
    mask and one per round (each ``sample_steps`` mask-pathway passes) plus one image-pathway
    pass per round. A second objective for studies that weigh Dice against cost."""
    return (1 + cfg.rounds) * cfg.diffusion.sample_steps + cfg.rounds


def iterations(n_images: int, batch: int, world: int, override: int) -> int:
    return override if override > 0 else max(1, math.ceil(n_images / (batch * world)))


class Trainer:
    """Holds the pieces of one run; ``fit`` walks the stages from wherever the checkpoint left off."""

    def __init__(self, cfg, run_dir, runtime: Runtime | None = None, pretrained: Path | None = None,
                 log=None, on_pretrained=None):
        self.cfg = cfg
        # called on the main rank with the path of teacher_pretrained.pt once stage 1 ends
        # (studies share that teacher between trials)
        self.on_pretrained = on_pretrained
        self.rt = runtime or local(cfg.device, cfg.amp, cfg.data.num_workers)
        self.log = log or (lambda msg: print(msg, flush=True))
        self.rd = RunDir(run_dir)
        self.pretrained = Path(pretrained) if pretrained else None
        # all input checks (files, sizes, masks, splits) happen here, before anything is written
        self.data = prepare(cfg.data, progress=self.rt.is_main)
        saved_splits = self.rd.path / "splits.json"
        if saved_splits.exists():
            self.data.splits = Splits.load(saved_splits)
        self.diffusion = Diffusion(cfg.diffusion.steps, cfg.diffusion.schedule)
        seed_everything(cfg.seed)
        channels = self.data.source.channels
        self.teacher = self.rt.prepare_model(build_teacher(cfg, channels))
        self.student = self.rt.prepare_model(build_student(cfg, channels))
        seed_everything(cfg.seed + 1000 * self.rt.rank)  # different noise on every rank
        self.opt_pre = torch.optim.Adam(self.teacher.parameters(), lr=cfg.pretrain.lr)
        self.opt_t = torch.optim.Adam(self.teacher.parameters(), lr=cfg.train.lr)
        self.opt_s = torch.optim.Adam(self.student.parameters(), lr=cfg.train.lr)
        self.stage, self.epoch, self.best = "pretrain", 0, None
        self.last_report = None  # the last epoch's report, repeated if a finished run is resumed
        self.writer = None

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        if not self.rt.is_main:
            return
        atomic_save({"stage": self.stage, "epoch": self.epoch, "teacher": self.teacher.state_dict(),
                     "student": self.student.state_dict(), "opt_pre": self.opt_pre.state_dict(),
                     "opt_t": self.opt_t.state_dict(), "opt_s": self.opt_s.state_dict(),
                     "best": self.best, "rng": rng_state(), "config": config_mod.to_dict(self.cfg),
                     "last_report": self.last_report},
                    self.rd.last)

    def restore(self) -> None:
        state = torch.load(self.rd.last, map_location=self.rt.device, weights_only=False)
        self.teacher.load_state_dict(state["teacher"])
        self.student.load_state_dict(state["student"])
        for name in ("opt_pre", "opt_t", "opt_s"):
            getattr(self, name).load_state_dict(state[name])
        self.stage, self.epoch, self.best = state["stage"], state["epoch"], state["best"]
        self.last_report = state.get("last_report")
        set_rng_state(state["rng"])
        if self.rt.rank:
            seed_everything(self.cfg.seed + 1000 * self.rt.rank + self.epoch)
        self.rd.truncate_log(self.stage, self.epoch)
        self.log(f"resuming {self.rd.path} at {self.stage} epoch {self.epoch}")

    def start(self) -> None:
        resuming = self.rd.create(self.cfg, self.rt.device) if self.rt.is_main else self.rd.last.exists()
        if self.rt.is_main:
            self.data.splits.save(self.rd.path / "splits.json")
            self.writer = self.rd.writer()
        if resuming:
            self.restore()
        elif self.pretrained is not None:
            self.teacher.load_state_dict(torch.load(self.pretrained, map_location=self.rt.device,
                                                    weights_only=True))
            self.stage = "train"
            self.log(f"teacher loaded from pretrained {self.pretrained}: stage 1 skipped")

    # ------------------------------------------------------------------ stages
    def fit(self) -> dict:
        t0 = time.time()
        self.start()
        counts = self.data.splits.counts()
        self.log(f"run {self.rd.path}: {self.data.source.dataset} {counts} on {self.rt.device}")
        if self.stage == "pretrain":
            self.pretrain()
        if self.stage == "train":
            self.cotrain()
        elif self.stage == "done" and self.last_report is not None:
            # stopped after its last epoch but before the end: whoever watches the reports
            # (a Tune scheduler) must still see the final epoch
            self.rt.report(self.last_report, self.rd.checkpoints)
        summary = self.finish(time.time() - t0)
        if self.writer is not None:
            self.writer.close()
        return summary

    def pretrain(self) -> None:
        cfg, pool = self.cfg.pretrain, list(self.data.splits.labeled + self.data.splits.unlabeled)
        dataset = self.data.dataset(pool, train=self.cfg.data.augment, jitter=self.cfg.data.intensity_jitter,
                                    with_mask=False)
        iters = iterations(len(pool), cfg.batch_size, self.rt.world_size, cfg.iters_per_epoch)
        while self.epoch < cfg.epochs:
            t0, e = time.time(), self.epoch
            lr = training.lr_at(cfg, e)
            training.set_lr(self.opt_pre, lr)
            loader = self.rt.loader(dataset, cfg.batch_size, shuffle=True, seed=self.cfg.seed, epoch=e)
            logs = training.pretrain_epoch(self.teacher, self.opt_pre, self.diffusion, loader, iters, self.rt)
            self.rt.broadcast_state(self.teacher)
            self.epoch += 1
            self.record("pretrain", e, logs | {"lr": lr}, time.time() - t0)
            self.log(f"[pretrain {e + 1}/{cfg.epochs}] rec {logs['loss_rec']:.4f} lr {lr:.2e} "
                     f"({time.time() - t0:.1f}s)")
            self.save()
        self.stage, self.epoch = "train", 0
        if self.rt.is_main:
            atomic_save(self.teacher.state_dict(), self.rd.path / "teacher_pretrained.pt")
            self.save()
            if self.on_pretrained is not None:
                self.on_pretrained(self.rd.path / "teacher_pretrained.pt")

    def cotrain(self) -> None:
        cfg, splits = self.cfg.train, self.data.splits
        aug, jit = self.cfg.data.augment, self.cfg.data.intensity_jitter
        labeled = self.data.dataset("labeled", train=aug, jitter=jit)
        # with every training image labeled, the unlabeled terms use the labeled images
        unlabeled = self.data.dataset(list(splits.unlabeled or splits.labeled), train=aug, jitter=jit,
                                      with_mask=False)
        iters = iterations(len(labeled), cfg.batch_size, self.rt.world_size, cfg.iters_per_epoch)
        while self.epoch < cfg.epochs:
            t0, e = time.time(), self.epoch
            lr = training.lr_at(cfg, e)
            training.set_lr(self.opt_t, lr)
            training.set_lr(self.opt_s, lr)
            lab = self.rt.loader(labeled, cfg.batch_size, shuffle=True, seed=self.cfg.seed, epoch=e)
            unl = self.rt.loader(unlabeled, cfg.batch_size, shuffle=True, seed=self.cfg.seed + 1, epoch=e)
            logs = training.cotrain_epoch(self.teacher, self.student, self.opt_t, self.opt_s, self.diffusion,
                                          lab, unl, iters, self.cfg, e, self.rt)
            self.rt.broadcast_state(self.teacher)
            self.rt.broadcast_state(self.student)
            val = self.validate(e)
            self.epoch += 1
            metrics = logs | val | {"lr": lr}
            self.record("train", e, metrics, time.time() - t0)
            self.log(f"[train {e + 1}/{cfg.epochs}] loss {logs['loss']:.4f} cps {logs['cps']:.3f} "
                     f"val dice teacher {val['val_dice_teacher']:.3f} student {val['val_dice_student']:.3f} "
                     f"(best {self.best['val_dice']:.3f} {self.best['model']}@{self.best['epoch'] + 1}) "
                     f"({time.time() - t0:.1f}s)")
            self.last_report = metrics | {
                "epoch": e + 1, "epoch_s": time.time() - t0, "pl_cost": pseudo_label_cost(self.cfg),
                "val_dice": self.best["val_dice"],
                "val_dice_last": max(val["val_dice_teacher"], val["val_dice_student"])}
            self.save()
            self.rt.report(self.last_report, self.rd.checkpoints)
        self.stage = "done"
        self.save()

    def selection_part(self) -> str:
        return "test" if self.cfg.protocol == "paper" else "val"

    def validate(self, epoch: int) -> dict:
        """Score teacher and student on the selection split; keep the better as best.pt."""
        part = self.selection_part()
        dataset = self.data.dataset(part)
        out = {}
        for name, model in (("teacher", self.teacher), ("student", self.student)):
            probs, gts, fovs = evaluate.collect(model, dataset, self.diffusion, self.cfg.diffusion, self.rt,
                                                self.cfg.seed)
            thr, _ = evaluate.best_threshold(probs, gts, fovs)
            res = evaluate.score(probs, gts, fovs, thr, surface=False)
            out[f"val_dice_{name}"], out[f"val_threshold_{name}"] = res["dice"], thr
            if self.best is None or res["dice"] > self.best["val_dice"]:
                self.best = {"model": name, "epoch": epoch, "val_dice": res["dice"], "threshold": thr}
                self.save_best(model, name)
        if self.writer is not None and self.rt.is_main:
            log_images(self.writer, self, dataset, epoch)
        return out

    def save_best(self, model, name: str) -> None:
        if not self.rt.is_main:
            return
        atomic_save({"model": name, "state": model.state_dict(), "best": dict(self.best),
                     "config": config_mod.to_dict(self.cfg), "mean": self.data.mean, "std": self.data.std,
                     "channels": self.data.source.channels}, self.rd.best)

    def record(self, stage: str, epoch: int, metrics: dict, seconds: float) -> None:
        if not self.rt.is_main:
            return
        self.rd.log({"stage": stage, "epoch": epoch} | metrics | {"seconds": seconds})
        step = epoch if stage == "pretrain" else self.cfg.pretrain.epochs + epoch
        for k, v in metrics.items():
            self.writer.add_scalar(f"{stage}/{k}", v, step)

    # ------------------------------------------------------------------ end of run
    def finish(self, seconds: float) -> dict:
        """Load the kept model, score validation and (once) the test split, write summary.json."""
        kept = load_best(self.rd.path, self.rt.device)
        summary = {"run_dir": str(self.rd.path), "dataset": self.data.source.dataset,
                   "protocol": self.cfg.protocol, "counts": self.data.splits.counts(),
                   "selected": kept["best"], "wall_s": round(seconds, 1)}
        if self.cfg.protocol == "paper":
            summary["note"] = PAPER_NOTE
        for part in ("val", "test"):
            summary[part] = self.score_split(kept["net"], part, kept["best"]["threshold"])
        if self.rt.is_main:
            self.rd.write_json("summary.json", summary)
            self.rd.log({"stage": "final", "epoch": self.cfg.train.epochs, "val_dice": summary["val"]["dice"],
                         "test_dice": summary["test"]["dice"]})
        self.log(f"kept {kept['best']['model']} from epoch {kept['best']['epoch'] + 1} "
                 f"(threshold {kept['best']['threshold']:.2f}): val dice {summary['val']['dice']:.4f}, "
                 f"test dice {summary['test']['dice']:.4f}")
        return summary

    def score_split(self, net, part: str, threshold: float) -> dict:
        if not getattr(self.data.splits, part):
            return {}
        probs, gts, fovs = evaluate.collect(net, self.data.dataset(part), self.diffusion, self.cfg.diffusion,
                                            self.rt, self.cfg.seed)
        return evaluate.score(probs, gts, fovs, threshold, self.data.source.spacing)


def load_best(run_dir: Path, device: torch.device) -> dict:
    """The kept model of a run, rebuilt from the config stored with it."""
    path = Path(run_dir) / "checkpoints" / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"no kept model in {run_dir} (missing {path}); did the run finish an epoch?")
    state = torch.load(path, map_location=device, weights_only=False)
    cfg = config_mod.from_dict(state["config"])
    build = build_teacher if state["model"] == "teacher" else build_student
    net = build(cfg, state["channels"]).to(device)
    net.load_state_dict(state["state"])
    net.eval()
    return state | {"net": net, "cfg": cfg}


def train(cfg, run_dir, runtime: Runtime | None = None, pretrained: Path | None = None, log=None,
          on_pretrained=None) -> dict:
    return Trainer(cfg, run_dir, runtime, pretrained, log, on_pretrained).fit()


def default_run_dir(cfg) -> Path:
    """runs/<name>-<time>-<pid>: unique without counting folders (no race between runs)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.data.dataset}-{stamp}-{os.getpid()}"
