"""The one training loop. It runs any method (``diffseg/methods``) through its stages: epochs,
learning-rate schedule, data, resume, validation and selection, the test score, the summary and
the reports. A run is resumable from ``checkpoints/last.pt`` at every epoch boundary.
"""
from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch

from . import checkpoint, config as config_mod, evaluate
from .data import Splits, prepare
from .errors import DataError, Diverged
from .infer import load_kept
from .methods import Stage, Step, build_method, stage1_config, stage1_key
from .rundir import RunDir
from .runtime import Runtime, local
from .visuals import log_images

PAPER_NOTE = "protocol=paper: checkpoint and threshold were selected on the TEST split (original protocol)"


def lr_at(stage_cfg, epoch: int) -> float:
    """Linear warm-up, then halve every ``decay_every`` epochs (paper: 20, 50)."""
    if epoch < stage_cfg.warmup_epochs:
        return stage_cfg.lr * (epoch + 1) / stage_cfg.warmup_epochs
    if stage_cfg.decay_every > 0:
        return stage_cfg.lr * 0.5 ** ((epoch - stage_cfg.warmup_epochs) // stage_cfg.decay_every)
    return stage_cfg.lr


def iterations(n_images: int, batch: int, world: int, override: int) -> int:
    """Steps per epoch: one pass over the stage's first input (paper: the labeled images)."""
    return override if override > 0 else max(1, math.ceil(n_images / (batch * world)))


def batches(loader, n: int):
    """``n`` batches, starting the loader over when it runs out (small labeled sets)."""
    it = iter(loader)
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            it = iter(loader)
            yield next(it)


# every loss term of every method is a Dice loss (<= 1), a cross-entropy or a noise MSE of order 1,
# weighted by factors of order 1: a term past this has left any sane range (it diverged)
DIVERGED_LOSS = 1e4


def check_divergence(stage: str, terms: dict, step: Step, cfg, runtime: Runtime) -> None:
    """Raise Diverged when a loss term is not finite or has exploded, naming the term, the stage
    and epoch, and the learning rate that most often causes it. Decided by every rank together,
    so no rank waits in a collective for one that stopped."""
    bad = next(((k, v) for k, v in terms.items() if not math.isfinite(v) or abs(v) > DIVERGED_LOSS), None)
    if runtime.distributed and runtime.mean(1.0 if bad else 0.0) > 0 and bad is None:
        bad = ("loss (on another rank)", math.nan)
    if bad is None:
        return
    name, value = bad
    lr = getattr(cfg, stage).lr
    what = "is not finite" if not math.isfinite(value) else f"exceeds {DIVERGED_LOSS:g}"
    raise Diverged(f"{stage} diverged at epoch {step.epoch + 1}, step {step.index + 1}: loss term "
                   f"'{name}' = {value:.4g} {what}; the usual cause is the learning rate "
                   f"(config key '{stage}.lr' = {lr:g}): lower it", stage, step.epoch, f"{stage}.lr")


def train_step(method, stage: Stage, batch: dict, step: Step, runtime: Runtime) -> dict[str, float]:
    """One optimisation step of ``stage``: the method's loss, gradients averaged over the workers,
    every optimizer of the stage stepped, then the method's after-step hook. Returns the terms."""
    with runtime.autocast():
        loss, terms = method.loss(stage.name, batch, step)
    check_divergence(stage.name, terms, step, method.cfg, runtime)
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
        # called on the main rank with the path of pretrained.pt once stage 1 ends (studies
        # share it between trials)
        self.on_pretrained = on_pretrained
        self.pretrained = Path(pretrained) if pretrained else None
        self.rd = RunDir(run_dir)
        # all input checks (files, sizes, masks, splits) happen here, before anything is written
        self.data = prepare(cfg.data, progress=self.rt.is_main, root=self.rt.data_root, cache_dir=self.rt.cache_dir)
        if (self.rd.path / "splits.json").exists():
            self.data.splits = Splits.load(self.rd.path / "splits.json")
        checkpoint.seed_everything(cfg.seed)
        self.method = build_method(cfg, self.data.source.channels, self.rt.prepare_model)
        if self.pretrained is not None and not self.method.pretrained:
            raise DataError(f"--pretrained {self.pretrained}: method '{cfg.method}' has no stage 1 to skip")
        self.stage, self.epoch, self.best = self.method.stages[0].name, 0, None
        self.last_report = None  # the last epoch's report, repeated if a finished run is resumed
        self.sel = "test" if cfg.protocol == "paper" else "val"  # the split that selects
        self.writer = None
        self._truth: dict[str, evaluate.Truth] = {}

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        if not self.rt.is_main:
            return
        checkpoint.save({"stage": self.stage, "epoch": self.epoch, "best": self.best,
                         "networks": {n: net.state_dict() for n, net in self.method.networks.items()},
                         "optimizers": {n: o.state_dict() for n, o in self.method.optimizers.items()},
                         "rng": checkpoint.rng_state(), "config": config_mod.to_dict(self.cfg),
                         "last_report": self.last_report}, self.rd.last, keep_previous=True)

    def load_last(self) -> dict:
        """The last checkpoint, or (damaged or missing: a disk error, a bad copy) the one before it,
        said in the log; neither readable is an error naming both files."""
        prev = checkpoint.previous(self.rd.last)
        try:
            return checkpoint.load(self.rd.last, self.rt.device)
        except (DataError, FileNotFoundError) as exc:
            if not prev.exists():
                raise
            self.log(f"WARNING: {exc}; resuming from the checkpoint before it, {prev}")
            try:
                return checkpoint.load(prev, self.rt.device)
            except DataError as second:
                raise DataError(f"cannot resume {self.rd.path}: {exc}; and {second}") from None

    def restore(self) -> None:
        state = self.load_last()
        for name, net in self.method.networks.items():
            net.load_state_dict(state["networks"][name])
        for name, opt in self.method.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.stage, self.epoch, self.best = state["stage"], state["epoch"], state["best"]
        self.last_report = state.get("last_report")
        checkpoint.set_rng_state(state["rng"])
        if self.rt.rank:
            checkpoint.seed_everything(self.cfg.seed + 1000 * self.rt.rank + self.epoch)
        self.rd.truncate_log(self.stage, self.epoch)
        self.log(f"resuming {self.rd.path} at {self.stage} epoch {self.epoch}")

    def save_best(self, name: str) -> None:
        if not self.rt.is_main:
            return
        checkpoint.save({"method": self.cfg.method, "predictor": name, "selected": dict(self.best),
                         "network": self.method.networks[name].state_dict(), "config": config_mod.to_dict(self.cfg),
                         "mean": [float(v) for v in self.data.mean], "std": [float(v) for v in self.data.std],
                         "channels": self.data.source.channels}, self.rd.best)

    def load_pretrained(self) -> None:
        state = checkpoint.load(self.pretrained, self.rt.device)
        if not isinstance(state, dict) or set(state.get("networks", {})) != set(self.method.pretrained):
            raise DataError(f"--pretrained {self.pretrained} does not hold the networks stage 1 of "
                            f"'{self.cfg.method}' trains ({', '.join(self.method.pretrained)})")
        for name, weights in state["networks"].items():
            self.method.networks[name].load_state_dict(weights)
        mine = stage1_config(self.cfg, self.rt.numerics())
        differ = sorted(k for k in set(mine) | set(state.get("stage1", {}))
                        if mine.get(k) != state.get("stage1", {}).get(k))
        note = f" (made under other stage-1 settings: {', '.join(differ)})" if differ else ""
        self.log(f"stage 1 skipped: networks loaded from {self.pretrained}{note}")
        self.stage = self.method.stages[[s.name for s in self.method.stages].index("pretrain") + 1].name

    def publish_pretrained(self) -> None:
        """The networks stage 1 trained, with the settings that made them: ``pretrained.pt``."""
        if not self.rt.is_main:
            return
        path = self.rd.path / "pretrained.pt"
        checkpoint.save({"method": self.cfg.method, "key": stage1_key(self.cfg, self.rt.numerics()),
                         "stage1": stage1_config(self.cfg, self.rt.numerics()),
                         "networks": {n: self.method.networks[n].state_dict() for n in self.method.pretrained}},
                        path)
        if self.on_pretrained is not None:
            self.on_pretrained(path)

    def start(self) -> None:
        resuming = self.rd.create(self.cfg, self.rt.device) if self.rt.is_main else self.rd.resumable()
        if self.rt.is_main:
            self.data.splits.save(self.rd.path / "splits.json")
            self.writer = self.rd.writer()
        if resuming:
            self.restore()
        else:
            if self.rt.is_main and (self.rd.path / "metrics.jsonl").exists():
                # records of an attempt that ended before its first checkpoint (a full disk,
                # say): this start trains those epochs again
                self.rd.truncate_log("pretrain", 0)
            if self.pretrained is not None:
                self.load_pretrained()

    # ------------------------------------------------------------------ stages
    def fit(self) -> dict:
        t0 = time.time()
        self.start()
        self.log(f"run {self.rd.path}: {self.cfg.method} on {self.data.source.dataset} "
                 f"{self.data.splits.counts()} on {self.rt.device}")
        names = [s.name for s in self.method.stages]
        if self.last_report is not None and self.stage == names[-1]:
            # resumed mid-stage: the epoch saved last may have died before its report went out
            # (a kill between the two); sent again, and whoever watches drops it if already taken
            self.rt.report(self.last_report, self.rd.checkpoints)
        try:
            for i, stage in enumerate(self.method.stages):
                if self.stage == stage.name:
                    self.run_stage(stage, i)
                    self.stage, self.epoch = (names[i + 1] if i + 1 < len(names) else "done"), 0
                    if stage.name == "pretrain":
                        self.publish_pretrained()
                    self.save()
        except Diverged as exc:
            self.record_divergence(exc, time.time() - t0)
            raise
        summary = self.rt.share(self.finish(time.time() - t0) if self.rt.is_main else None)
        if self.last_report is not None:
            # the final epoch, reported once the summary exists (also when a run stopped after
            # its last epoch is resumed: whoever watches the reports must still see it)
            self.rt.report(self.last_report, self.rd.checkpoints)
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
        scfg, selects = getattr(self.cfg, stage.name), stage is self.method.stages[-1]
        datasets = [self.inputs(name) for name in stage.inputs]
        iters = iterations(len(datasets[0]), scfg.batch_size, self.rt.world_size, scfg.iters_per_epoch)
        if self.epoch == 0:
            # every stage starts from its own seed: a stage-2 run that loaded a shared stage 1
            # continues exactly like one that ran it; every rank draws different noise
            checkpoint.seed_everything(self.cfg.seed + 1000 * self.rt.rank + 100_000 * index)
        while self.epoch < scfg.epochs:
            t0, e = time.time(), self.epoch
            lr = lr_at(scfg, e)
            for name in stage.optimizers:
                for group in self.method.optimizers[name].param_groups:
                    group["lr"] = lr
            loaders = [self.rt.loader(ds, scfg.batch_size, shuffle=True, seed=self.cfg.seed + i, epoch=e)
                       for i, ds in enumerate(datasets)]
            logs = self.run_epoch(stage, loaders, Step(e, 0, iters, scfg.epochs))
            for net in self.method.networks.values():
                self.rt.broadcast_state(net)
            # scored once, on rank 0, and shared: every rank keeps the same selection state
            scores, self.best = self.rt.share(
                ((self.validate(e) if selects else self.monitor(stage)), self.best) if self.rt.is_main else None)
            self.epoch += 1
            metrics = logs | scores | {"lr": lr}
            self.record(stage.name, e, metrics, time.time() - t0)
            self.log(self.progress_line(stage, e, scfg.epochs, metrics, time.time() - t0))
            if selects:
                self.last_report = metrics | {
                    "epoch": e + 1, "epoch_s": time.time() - t0, "pl_cost": self.method.pseudo_label_cost()}
            self.save()
            if selects and self.epoch < scfg.epochs:
                # the last epoch is reported after the summary (see fit): a scheduler that stops
                # the trial on it must find its test score written
                self.rt.report(self.last_report, self.rd.checkpoints)

    def run_epoch(self, stage: Stage, loaders, at: Step) -> dict:
        self.method.train_mode(True)
        sums: dict[str, float] = defaultdict(float)
        for i, group in enumerate(zip(*(batches(loader, at.per_epoch) for loader in loaders))):
            batch = {name: {k: v.to(self.rt.device) for k, v in b.items() if k in ("image", "mask")}
                     for name, b in zip(stage.inputs, group)}
            terms = train_step(self.method, stage, batch, Step(at.epoch, i, at.per_epoch, at.epochs), self.rt)
            for k, v in terms.items():
                sums[k] += v
        return {k: self.rt.mean(v / at.per_epoch) for k, v in sums.items()}

    def progress_line(self, stage: Stage, e: int, epochs: int, m: dict, seconds: float) -> str:
        head = f"[{stage.name} {e + 1}/{epochs}] loss {m['loss']:.4f}"
        if "val_dice_unsupervised" in m:
            head += (f" val dice of the label-free {stage.monitor} mask {m['val_dice_unsupervised']:.3f} "
                     f"(all-foreground {m['val_dice_all_foreground']:.3f})")
        if self.best is not None and f"{self.sel}_dice" in m:
            each = " ".join(f"{p} {m[f'{self.sel}_dice_{p}']:.3f}" for p in self.method.predictors)
            head += (f" {self.sel} dice {each} (best {self.best['dice']:.3f} "
                     f"{self.best['predictor']}@{self.best['epoch'] + 1})")
        return head + f" lr {m['lr']:.2e} ({seconds:.1f}s)"

    # ------------------------------------------------------------------ scores
    def truth(self, part: str) -> evaluate.Truth:
        """A split's ground truth at the scoring resolution, read once per run."""
        if part not in self._truth:
            self._truth[part] = self.data.truth(part, self.cfg.eval.resolution)
        return self._truth[part]

    def probabilities(self, net, part: str, diffusion) -> list:
        probs = evaluate.collect(net, self.data.dataset(part), diffusion, self.cfg.diffusion, self.rt, self.cfg.seed,
                                 overlap=self.cfg.eval.overlap)
        return self.truth(part).resize(probs)

    def validate(self, epoch: int) -> dict:
        """Score every predictor on the selection split; keep the best so far as best.pt. Metric
        names carry the split they come from (``test_`` under protocol=paper)."""
        sel, out, truth = self.sel, {}, self.truth(self.sel)
        for name in self.method.predictors:
            probs = self.probabilities(self.method.networks[name], sel, self.method.diffusion)
            thr, _ = evaluate.best_threshold(probs, truth.gts, truth.fovs)
            dice = evaluate.score(probs, truth.gts, truth.fovs, thr, surface=False)["dice"]
            out[f"{sel}_dice_{name}"], out[f"{sel}_threshold_{name}"] = dice, thr
            if self.best is None or dice > self.best["dice"]:
                self.best = {"predictor": name, "epoch": epoch, "dice": dice, "split": sel, "threshold": thr}
                self.save_best(name)
        out[f"{sel}_dice"] = self.best["dice"]
        out[f"{sel}_dice_last"] = max(out[f"{sel}_dice_{p}"] for p in self.method.predictors)
        out[f"{sel}_dice_all_foreground"] = truth.trivial()["all_foreground_dice"]  # the floor, beside it
        if self.writer is not None:
            log_images(self.writer, self.method, self.data, self.data.dataset(sel), epoch, self.rt.device)
        return out

    def monitor(self, stage: Stage) -> dict:
        """A stage without labels shows whether it learns: the validation Dice of its label-free
        mask (either channel) beside the all-foreground Dice. Nothing here feeds a gradient."""
        if not stage.monitor or not self.data.splits.val:
            return {}
        truth = self.truth("val")
        probs = self.probabilities(self.method.networks[stage.monitor], "val", self.method.diffusion)
        return {"val_dice_unsupervised": evaluate.label_free_dice(probs, truth.gts, truth.fovs),
                "val_dice_all_foreground": truth.trivial()["all_foreground_dice"]}

    def record(self, stage: str, epoch: int, metrics: dict, seconds: float) -> None:
        if not self.rt.is_main:
            return
        self.rd.log({"stage": stage, "epoch": epoch} | metrics | {"seconds": seconds})
        names = [s.name for s in self.method.stages]
        offset = sum(getattr(self.cfg, s).epochs for s in names[:names.index(stage)])
        for k, v in metrics.items():
            self.writer.add_scalar(f"{stage}/{k}", v, offset + epoch)

    # ------------------------------------------------------------------ end of run
    def finish(self, seconds: float) -> dict:
        """Main rank: load the kept model, score validation and (once) the test split, write summary.json.
        Every score stands beside the trivial ones of its split, and a model that does not beat
        predicting foreground everywhere is flagged."""
        kept = load_kept(self.rd.path, self.rt.device)
        summary = {"run_dir": str(self.rd.path), "method": self.cfg.method, "dataset": self.data.source.dataset,
                   "status": "complete", "protocol": self.cfg.protocol, "resolution": self.cfg.eval.resolution,
                   "counts": self.data.splits.counts(), "selected": kept.selected, "wall_s": round(seconds, 1),
                   "device": str(self.rt.device), "peak_memory_mb": round(peak_memory_mb(self.rt.device), 1),
                   "pl_cost": self.method.pseudo_label_cost()}
        if evaluate.at_edge(kept.threshold):
            summary["selected"] = kept.selected | {"threshold_at_edge": True}
            summary["threshold_note"] = (f"the threshold {kept.threshold:.2f} sits at the end of the grid "
                                         f"({evaluate.THRESHOLDS[0]:.2f}-{evaluate.THRESHOLDS[-1]:.2f}): the "
                                         f"model's probabilities are poorly calibrated")
        if self.cfg.protocol == "paper":
            summary["note"] = PAPER_NOTE
        for part in ("val", "test"):
            summary[part] = self.score_split(kept, part)
        flags = [f"{part} Dice {summary[part]['dice']:.4f} does not beat predicting foreground everywhere "
                 f"({summary[part]['all_foreground_dice']:.4f})" for part in ("val", "test")
                 if summary[part] and not summary[part]["beats_trivial"]]
        if flags:
            summary["warning"] = "; ".join(flags)
        self.rd.write_json("summary.json", summary)  # finish runs on the main rank only
        self.rd.log({"stage": "final", "epoch": self.cfg.train.epochs, "val_dice": summary["val"].get("dice"),
                     "test_dice": summary["test"].get("dice")})
        test = summary["test"]
        self.log(f"kept {kept.predictor} from epoch {kept.selected['epoch'] + 1} (threshold {kept.threshold:.2f}): "
                 f"val dice {summary['val'].get('dice', float('nan')):.4f}, test dice {test.get('dice', float('nan')):.4f}"
                 + (f" (all-foreground {test['all_foreground_dice']:.4f}; scored at {self.cfg.eval.resolution} size)"
                    if test else ""))
        for flag in flags + ([summary["threshold_note"]] if "threshold_note" in summary else []):
            self.log(f"WARNING: {flag}")
        return summary

    def record_divergence(self, exc: Diverged, seconds: float) -> None:
        """A diverged run is a result: its summary says so and why; nothing is scored (the weights
        are garbage), and the last good checkpoint stays for whoever wants to look."""
        if self.writer is not None:
            self.writer.close()
        if not self.rt.is_main:
            return
        self.rd.write_json("summary.json", {
            "run_dir": str(self.rd.path), "method": self.cfg.method, "dataset": self.data.source.dataset,
            "status": "diverged", "reason": str(exc), "stage": exc.stage, "epoch": exc.epoch + 1, "key": exc.key,
            "val": {}, "test": {}, "wall_s": round(seconds, 1), "device": str(self.rt.device)})
        self.rd.log({"stage": "final", "epoch": exc.epoch, "status": "diverged"})
        self.log(f"DIVERGED: {exc}")

    def score_split(self, kept, part: str) -> dict:
        if not getattr(self.data.splits, part):
            return {}
        truth = self.truth(part)
        probs = self.probabilities(kept.net, part, kept.diffusion)
        out = evaluate.score(probs, truth.gts, truth.fovs, kept.threshold, truth.spacings)
        trivial = truth.trivial()
        return out | trivial | {"beats_trivial": out["dice"] > max(trivial.values())}


def peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory: the CUDA allocator's peak, or the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def fit(cfg, run_dir, runtime: Runtime | None = None, pretrained: Path | None = None, log=None,
        on_pretrained=None) -> dict:
    """Run ``cfg``'s method in ``run_dir`` (resuming what is there) and return its summary."""
    return Loop(cfg, run_dir, runtime, pretrained, log, on_pretrained).fit()


def default_run_dir(cfg) -> Path:
    """runs/<name>-<method>-<dataset>-<time>-<pid>: unique without counting folders (no race)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.name}-{cfg.method}-{cfg.data.dataset}-{stamp}-{os.getpid()}"
