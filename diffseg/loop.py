"""The one training loop. It runs any method (``diffseg/methods``) through its stages: epochs,
learning-rate schedule, data and the reports; validation, the kept model and the summary are
``selection``'s, the state on disk ``run_state``'s. A run is resumable from
``checkpoints/last.pt`` at every epoch boundary.

Reports (``Runtime.report``) follow one rule: a report may repeat an epoch, and whoever receives
them drops the duplicates. A run resumed after a kill sends its last saved epoch again, since it
may have died between saving it and reporting it.
"""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

from . import checkpoint, durable, run_state
from .data import Splits, prepare
from .data.cache import cache_dir
from .data.sources import data_root
from .data.torchdata import check_known
from .errors import DataError, Diverged
from .methods import Stage, Step, build_method
from .rundir import RunDir
from .runtime import Runtime, local
from .selection import Selection


def lr_at(stage_cfg, epoch: int) -> float:
    """The stage's learning rate in ``epoch`` (0-based), by ``schedule``."""
    warm, every, lr = stage_cfg.warmup_epochs, stage_cfg.decay_every, stage_cfg.lr
    if stage_cfg.schedule == "gradual_warmup":
        # the authors' GradualWarmupScheduler(multiplier 1) around StepLR, stepped once per
        # epoch after it: 0 first, a linear climb, then the step decay one epoch late
        if epoch < warm:
            return lr * epoch / warm
        return lr * 0.5 ** max(0, (epoch - warm - 1) // every) if every > 0 else lr
    if epoch < warm:  # linear warm-up, then halve every ``decay_every`` epochs (paper: 20, 50)
        return lr * (epoch + 1) / warm
    if every > 0:
        return lr * 0.5 ** ((epoch - warm) // every)
    return lr


def iterations(n_images: int, batch: int, world: int, override: int) -> int:
    """Steps per epoch: one pass over the stage's first input (paper: the labeled images)."""
    return override if override > 0 else max(1, math.ceil(n_images / (batch * world)))


def batches(loader, n: int):
    """``n`` batches, starting the loader over when it runs out (small labeled sets); a new pass
    draws new augmentations (``StoreItems.next_pass``)."""
    it = iter(loader)
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            getattr(loader.dataset, "next_pass", lambda: None)()
            it = iter(loader)
            yield next(it)


# every loss term of every method is a Dice loss (<= 1), a cross-entropy or a noise MSE of order 1,
# weighted by factors of order 1: a term past this has left any sane range (it diverged)
DIVERGED_LOSS = 1e4


def check_divergence(stage: Stage, rows: list[dict[str, float]], epoch: int, cfg, runtime: Runtime) -> None:
    """Raise Diverged when a loss term of an epoch's steps is not finite or has exploded, naming
    the term, the stage, epoch and step, and the learning rate that most often causes it. Decided
    by every rank together, so no rank waits in a collective for one that stopped."""
    bad = next(((i, k, v) for i, row in enumerate(rows) for k, v in row.items()
                if not math.isfinite(v) or abs(v) > DIVERGED_LOSS), None)
    if runtime.distributed and runtime.mean(1.0 if bad else 0.0) > 0 and bad is None:
        bad = (len(rows) - 1, "loss (on another rank)", math.nan)
    if bad is None:
        return
    index, name, value = bad
    lr = getattr(cfg, stage.section).lr
    what = "is not finite" if not math.isfinite(value) else f"exceeds {DIVERGED_LOSS:g}"
    raise Diverged(f"{stage.name} diverged at epoch {epoch + 1}, step {index + 1}: loss term "
                   f"'{name}' = {value:.4g} {what}; the usual cause is the learning rate "
                   f"(config key '{stage.section}.lr' = {lr:g}): lower it", stage.name, epoch,
                   f"{stage.section}.lr")


class StepTerms:
    """The loss terms of an epoch's steps, kept where they were computed: a step never waits for
    the host to read a number (on a GPU that wait idles it). ``read`` copies them all at once."""

    def __init__(self):
        self.steps: list[tuple[tuple[str, ...], torch.Tensor, dict[str, float]]] = []

    def add(self, terms: dict) -> None:
        tensors = {k: v for k, v in terms.items() if torch.is_tensor(v)}
        packed = torch.stack([v.detach().float().reshape(()) for v in tensors.values()]) if tensors else None
        self.steps.append((tuple(tensors), packed, {k: float(v) for k, v in terms.items() if k not in tensors}))

    def read(self) -> list[dict[str, float]]:
        """Every step's terms as floats, in step order and in each step's own key order."""
        packed = [p for _, p, _ in self.steps if p is not None]
        values = iter(torch.cat(packed).cpu().double().tolist() if packed else [])  # one copy
        return [{name: next(values) for name in names} | floats for names, _, floats in self.steps]


def train_step(method, stage: Stage, batch: dict, step: Step, runtime: Runtime) -> dict:
    """One optimisation step of ``stage``: the method's loss, gradients averaged over the workers,
    every optimizer of the stage stepped, then the method's after-step hook. Returns the terms
    (tensors on the device, read once per epoch; a diverged step is found then, see run_epoch)."""
    with runtime.autocast():
        loss, terms = method.loss(stage.name, batch, step)
    optimizers = [method.optimizers[n] for n in stage.optimizers]
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    runtime.sync_gradients([p for o in optimizers for g in o.param_groups for p in g["params"]])
    for opt in optimizers:
        opt.step()
    method.after_step(stage.name, step)
    return terms


class Loop:
    """One run of one method; ``fit`` walks the stages from wherever the checkpoint left off."""

    def __init__(self, cfg, run_dir, runtime: Runtime | None = None, pretrained: Path | None = None,
                 log=None, on_pretrained=None):
        self.cfg = cfg
        self.rt = runtime or local()
        self.log = log or (lambda msg: print(msg, flush=True))
        # called on the main rank with the path of pretrained.pt once a sharing stage ends
        # (studies share it between trials)
        self.on_pretrained = on_pretrained
        self.pretrained = Path(pretrained) if pretrained else None
        self.rd = RunDir(run_dir)
        # all input checks (files, sizes, masks, splits) happen here, before anything is written
        self.data = prepare(cfg.data, progress=self.rt.is_main, root=self.rt.data_root, cache_dir=self.rt.cache_dir)
        if (self.rd.path / "splits.json").exists():
            self.data.splits = Splits.load(self.rd.path / "splits.json")
            check_known(self.data.splits, list(self.data.index), self.rt.data_root)
        checkpoint.seed_everything(cfg.seed)
        self.method = build_method(cfg, self.data.source.channels, self.rt.prepare_model)
        if self.pretrained is not None and not self.method.pretrained:
            raise DataError(f"--pretrained {self.pretrained}: method '{cfg.method}' has no stage 1 to skip")
        self.stage_names = [s.name for s in self.method.stages]
        self.stage, self.epoch = self.stage_names[0], 0
        self.last_report = None  # the last epoch's report, repeated if a finished run is resumed
        self.selection = Selection(cfg, self.method, self.data, self.rd, self.rt, self.log)
        self.writer = None

    # ------------------------------------------------------------------ state on disk
    def save(self) -> None:
        if self.rt.is_main:
            run_state.save_last(self.rd, self.method, self.cfg, {"stage": self.stage, "epoch": self.epoch,
                                                                  "best": self.selection.best}, self.last_report)

    def restore(self) -> None:
        state = run_state.load_last(self.rd, self.rt.device, self.log)
        run_state.restore_networks(self.method, state)
        self.stage, self.epoch, self.selection.best = state["stage"], state["epoch"], state["best"]
        self.last_report = state.get("last_report")
        checkpoint.set_rng_state(state["rng"])
        if self.rt.rank:
            checkpoint.seed_everything(self.cfg.seed + 1000 * self.rt.rank + self.epoch)
        self.rd.truncate_log(self.stage_names, self.stage, self.epoch)
        self.log(f"resuming {self.rd.path} after {self.stage} epoch {self.epoch}")

    def load_pretrained(self) -> None:
        note = run_state.load_pretrained(self.pretrained, self.method, self.cfg, self.rt.numerics(), self.rt.device)
        self.log(f"stage 1 skipped: networks loaded from {self.pretrained}{note}")
        self.stage = run_state.after_sharing_stage(self.method)

    def publish_pretrained(self) -> None:
        if self.rt.is_main:
            path = self.rd.path / "pretrained.pt"
            run_state.publish_pretrained(path, self.method, self.cfg, self.rt.numerics())
            if self.on_pretrained is not None:
                self.on_pretrained(path)

    def start(self) -> None:
        where = {"data_root": str(data_root(self.rt.data_root).resolve()),
                 "cache_dir": str(cache_dir(self.rt.cache_dir).resolve())}
        resuming = self.rd.create(self.cfg, self.rt.device, where) if self.rt.is_main else self.rd.resumable()
        if self.rt.is_main:
            self.data.splits.save(self.rd.path / "splits.json")
            self.writer = self.rd.writer()
        if resuming:
            self.restore()
        else:
            if self.rt.is_main and (self.rd.path / "metrics.jsonl").exists():
                # records of an attempt that ended before its first checkpoint (a full disk,
                # say): this start trains those epochs again
                self.rd.truncate_log(self.stage_names, self.stage_names[0], 0)
            if self.pretrained is not None:
                self.load_pretrained()

    # ------------------------------------------------------------------ stages
    def fit(self) -> dict:
        # one process trains into a run folder: a second one on it is refused, naming this one
        lock = durable.FolderLock(self.rd.path, "run folder") if self.rt.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    def _fit(self) -> dict:
        t0 = time.time()
        self.start()
        self.log(f"run {self.rd.path}: {self.cfg.method} on {self.data.source.dataset} "
                 f"{self.data.splits.counts()} on {self.rt.device}")
        names = self.stage_names
        if self.last_report is not None and self.stage == names[-1]:
            # resumed mid-stage: the epoch saved last may have died before its report went out
            self.rt.report(self.last_report)
        try:
            for i, stage in enumerate(self.method.stages):
                if self.stage == stage.name:
                    self.run_stage(stage, i)
                    self.stage, self.epoch = (names[i + 1] if i + 1 < len(names) else "done"), 0
                    if stage.shares:
                        self.publish_pretrained()
                    self.save()
        except Diverged as exc:
            if self.writer is not None:
                self.writer.close()
            self.selection.record_divergence(exc, time.time() - t0)
            raise
        if self.rt.is_main:
            self.log("training done: scoring the kept model on validation, then once on the test split")
        summary = self.rt.share(self.selection.finish(time.time() - t0) if self.rt.is_main else None)
        if self.last_report is not None:
            # the final epoch, reported once the summary exists (also when a run stopped after
            # its last epoch is resumed: whoever watches the reports must still see it)
            self.rt.report(self.last_report)
        if self.writer is not None:
            self.writer.close()
        return summary

    def inputs(self, name: str):
        """The dataset behind a stage input. "images" is every training image without its mask,
        in name order, so stage 1 never depends on which images are labeled."""
        aug, jit, splits = self.cfg.data.augment, self.cfg.data.intensity_jitter, self.data.splits
        if name == "labeled":
            return self.data.dataset("labeled", train=True, augment=aug, jitter=jit)
        if name == "unlabeled":  # with every training image labeled, the labeled images stand in
            return self.data.dataset(list(splits.unlabeled or splits.labeled), train=True, augment=aug, jitter=jit,
                                     with_mask=False)
        return self.data.dataset(sorted(splits.labeled + splits.unlabeled), train=True, augment=aug, jitter=jit,
                                 with_mask=False)

    def run_stage(self, stage: Stage, index: int) -> None:
        scfg, selects = getattr(self.cfg, stage.section), stage is self.method.stages[-1]
        datasets = [self.inputs(name) for name in stage.inputs]
        iters = iterations(len(datasets[0]), scfg.batch_size, self.rt.world_size, scfg.iters_per_epoch)
        if self.epoch == 0:
            # every stage starts from its own seed: a stage-2 run that loaded a shared stage 1
            # continues exactly like one that ran it; every rank draws different noise
            checkpoint.seed_everything(self.cfg.seed + 1000 * self.rt.rank + 100_000 * index)
        sel = self.selection
        while self.epoch < scfg.epochs:
            t0, e = time.time(), self.epoch
            lr = lr_at(scfg, e)
            for name in stage.optimizers:
                for group in self.method.optimizers[name].param_groups:
                    group["lr"] = lr
            for i, ds in enumerate(datasets):  # augmentation drawn from the run, never from a loader worker
                ds.reseed(f"{self.cfg.seed}:{self.rt.rank}:{index}:{i}", e)
            loaders = [self.rt.loader(ds, scfg.batch_size, shuffle=True, seed=self.cfg.seed + i, epoch=e)
                       for i, ds in enumerate(datasets)]
            logs = self.run_epoch(stage, loaders, Step(e, 0, iters, scfg.epochs))
            for net in self.method.networks.values():
                self.rt.broadcast_state(net)
            validates = selects and sel.due(e, scfg.epochs)
            # scored once, on rank 0, and shared: every rank keeps the same selection state
            scores, sel.best = self.rt.share(
                ((sel.validate(e, self.writer) if validates else {} if selects else sel.monitor(stage)), sel.best)
                if self.rt.is_main else None)
            self.epoch += 1
            metrics = logs | scores | {"lr": lr}
            self.record(stage, e, metrics, time.time() - t0)
            self.log(self.progress_line(stage, e, scfg.epochs, metrics, time.time() - t0))
            if validates:  # an epoch without validation has nothing to report (eval.every)
                self.last_report = metrics | {
                    "epoch": e + 1, "epoch_s": time.time() - t0, "pl_cost": self.method.pseudo_label_cost()}
            self.save()
            if validates and self.epoch < scfg.epochs:
                # the last epoch is reported after the summary (see fit): a scheduler that stops
                # the trial on it must find its test score written
                self.rt.report(self.last_report)

    def run_epoch(self, stage: Stage, loaders, at: Step) -> dict:
        self.method.train_mode(True)
        terms = StepTerms()
        for i, group in enumerate(zip(*(batches(loader, at.per_epoch) for loader in loaders))):
            batch = {name: {k: v.to(self.rt.device) for k, v in b.items() if k in ("image", "mask")}
                     for name, b in zip(stage.inputs, group)}
            terms.add(train_step(self.method, stage, batch, Step(at.epoch, i, at.per_epoch, at.epochs), self.rt))
        rows = terms.read()
        # a step that diverged is found here, at the epoch's end: the steps after it trained on
        # nothing worth keeping, and the epoch is neither validated nor saved
        check_divergence(stage, rows, at.epoch, self.cfg, self.rt)
        sums: dict[str, float] = defaultdict(float)
        for row in rows:
            for k, v in row.items():
                sums[k] += v
        return {k: self.rt.mean(v / at.per_epoch) for k, v in sums.items()}

    def progress_line(self, stage: Stage, e: int, epochs: int, m: dict, seconds: float) -> str:
        head = f"[{stage.name} {e + 1}/{epochs}] loss {m['loss']:.4f}"
        if "val_dice_unsupervised" in m:
            head += (f" val dice of the label-free {stage.monitor} mask {m['val_dice_unsupervised']:.3f} "
                     f"(all-foreground {m['val_dice_all_foreground']:.3f})")
        if "val_readout_dice" in m:  # the readout diagnostic (diffseg/readout.py)
            head += (f"; readout {m['val_readout_dice']:.3f} (controls: image {m['val_readout_dice_image']:.3f}, "
                     f"random init {m['val_readout_dice_random_init']:.3f}), AUC {m['val_mask_auc']:.3f}: "
                     + ("learned" if m["stage1_learned"] else "not learned: the readout beats no control"
                        if m["val_readout_dice"] <= min(m['val_readout_dice_image'], m['val_readout_dice_random_init'])
                        else "not learned: a control reads as well"))
        best, sel = self.selection.best, self.selection.split
        if best is not None and f"{sel}_dice" in m:
            each = " ".join(f"{p} {m[f'{sel}_dice_{p}']:.3f}" for p in self.method.predictors)
            head += f" {sel} dice {each} (best {best['dice']:.3f} {best['predictor']}@{best['epoch']})"
        return head + f" lr {m['lr']:.2e} ({seconds:.1f}s)"

    def record(self, stage: Stage, epoch: int, metrics: dict, seconds: float) -> None:
        if not self.rt.is_main:
            return
        self.rd.log({"stage": stage.name, "epoch": epoch + 1} | metrics | {"seconds": seconds})  # from 1, as printed
        stages = self.method.stages
        offset = sum(getattr(self.cfg, s.section).epochs for s in stages[:stages.index(stage)])
        for k, v in metrics.items():
            self.writer.add_scalar(f"{stage.name}/{k}", v, offset + epoch + 1)


def fit(cfg, run_dir, runtime: Runtime | None = None, pretrained: Path | None = None, log=None,
        on_pretrained=None) -> dict:
    """Run ``cfg``'s method in ``run_dir`` (resuming what is there) and return its summary."""
    return Loop(cfg, run_dir, runtime, pretrained, log, on_pretrained).fit()


def default_run_dir(cfg) -> Path:
    """runs/<name>-<method>-<dataset>-<time>-<pid>: unique without counting folders (no race)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.method}-{cfg.data.dataset}-{stamp}-{os.getpid()}"
