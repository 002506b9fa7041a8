"""Selection: each epoch's validation of every predictor, the choice of the model a run keeps
(``checkpoints/best.pt``), and at the end its scores and the run's ``summary.json``."""
from __future__ import annotations

import copy
import hashlib
import json

import torch

from . import checkpoint, durable, evaluate, readout
from .data import Truth
from .errors import Diverged
from .kept import kept_state, load_kept, score_kept
from .visuals import log_images

KEPT_IMAGES = "kept_images.json"  # the kept model's Dice per image of the selecting split
PAPER_NOTE = "protocol=paper: checkpoint and threshold were selected on the TEST split (original protocol)"


class Selection:
    """Scores on the split that selects (validation; the test split under protocol=paper)."""

    def __init__(self, cfg, method, data, run_dir, runtime, log):
        self.cfg, self.method, self.data, self.rd, self.rt, self.log = cfg, method, data, run_dir, runtime, log
        self.split = "test" if cfg.protocol == "paper" else "val"
        self.best: dict | None = None  # predictor, epoch, dice, split, threshold of the kept model
        self.thresholds = evaluate.grid(*cfg.eval.thresholds)
        # the readout diagnostic's controls: the monitored network as initialised (this runs
        # before any restore or training), and the scores of both controls once computed
        monitored = {s.monitor for s in method.stages if s.monitor}
        self._random_init = {n: copy.deepcopy(method.networks[n].state_dict()) for n in monitored}
        self._controls: dict | None = None
        self._truth: dict[str, Truth] = {}

    def truth(self, part: str) -> Truth:
        """A split's ground truth at the scoring resolution, read once per run ("epoch:" + a
        split: the items each epoch's validation scores, see ``items``)."""
        items = self.items(part)
        key = items if isinstance(items, str) else part  # the whole split is read once, whoever asks
        if key not in self._truth:
            self._truth[key] = self.data.truth(items, self.cfg.eval.resolution)
        return self._truth[key]

    def items(self, part: str) -> str | list[str]:
        """A split by name, or for "epoch:<split>" at most ``eval.max_items`` of its names (a
        hashed choice, the same every epoch and on every machine; the whole split when 0): what
        each epoch's validation and the stage-1 readout (fitted on "epoch:labeled") read."""
        if not part.startswith("epoch:"):
            return part
        split, cap = part.split(":", 1)[1], self.cfg.eval.max_items
        names = list(getattr(self.data.splits, split))
        if cap <= 0 or len(names) <= cap:
            return split
        return sorted(sorted(names, key=lambda n: hashlib.sha256(f"epoch-items:{n}".encode()).hexdigest())[:cap])

    def probabilities(self, name: str, part: str) -> list:
        with self.method.evaluating():
            probs = evaluate.collect(self.method.predict(name), self.data.dataset(self.items(part)), self.rt,
                                     self.cfg.seed, overlap=self.cfg.eval.overlap)
        return self.truth(part).resize(probs)

    def due(self, epoch: int, epochs: int) -> bool:
        """Whether the selecting stage validates after ``epoch``: every ``eval.every`` epochs
        (counted from 1, as the authors' ``--validate_iter``) and after the last."""
        return (epoch + 1) % self.cfg.eval.every == 0 or epoch + 1 == epochs

    def validate(self, epoch: int, writer=None) -> dict:
        """Score every predictor on the selecting split; keep the best so far as best.pt. Metric
        names carry the split they come from (``test_`` under protocol=paper)."""
        sel, out, truth = self.split, {}, self.truth("epoch:" + self.split)
        kept_images = None  # the new kept model's Dice per image, if this epoch made one
        for name in self.method.predictors:
            probs = self.probabilities(name, "epoch:" + sel)
            thr, _ = evaluate.best_threshold(probs, truth.gts, truth.fovs, self.thresholds)
            scored = evaluate.score(probs, truth.gts, truth.fovs, thr, surface=False, per_image=True)
            dice = scored["dice"]
            out[f"{sel}_dice_{name}"], out[f"{sel}_threshold_{name}"] = dice, thr
            if self.best is None or dice > self.best["dice"]:
                self.best = {"predictor": name, "epoch": epoch + 1, "dice": dice, "split": sel, "threshold": thr}
                kept_images = scored["dice_per_image"]
                if self.rt.is_main:
                    checkpoint.save(kept_state(self.method, name, self.cfg, self.best, self.data), self.rd.best)
        if kept_images is not None and self.rt.is_main:  # once per epoch, for the model kept last
            self.write_kept_images("epoch:" + sel, kept_images)
        out[f"{sel}_dice"] = self.best["dice"]
        out[f"{sel}_dice_last"] = max(out[f"{sel}_dice_{p}"] for p in self.method.predictors)
        out[f"{sel}_dice_all_foreground"] = truth.trivial()["all_foreground_dice"]  # the floor, beside it
        if writer is not None:
            log_images(writer, self.method, self.data, self.data.dataset(sel), epoch + 1, self.rt.device)
        return out

    def write_kept_images(self, part: str, dice: list[float]) -> None:
        """The kept model's Dice per selecting image (``KEPT_IMAGES``), rewritten with each new
        kept model: what a study's paired stopping rule compares trials on (tune/paired.py)."""
        items = self.items(part)
        names = list(getattr(self.data.splits, items)) if isinstance(items, str) else list(items)
        record = {"kept_epoch": self.best["epoch"], "split": self.split, "dice": self.best["dice"],
                  "images": dict(zip(names, dice)) if len(names) == len(dice) else {}}
        durable.write_text(self.rd.path / KEPT_IMAGES, json.dumps(record))

    def monitor(self, stage) -> dict:
        """A stage without labels shows whether it learns: the validation Dice of its label-free
        mask (either channel) beside the all-foreground Dice, and on 2D images the readout
        diagnostic (``readout``). Nothing here feeds a gradient."""
        if not stage.monitor or not self.data.splits.val:
            return {}
        truth = self.truth("epoch:val")
        probs = self.probabilities(stage.monitor, "epoch:val")
        out = {"val_dice_unsupervised": evaluate.label_free_dice(probs, truth.gts, truth.fovs),
               "val_dice_all_foreground": truth.trivial()["all_foreground_dice"]}
        if self.method.dims == 2 and not self.data.window:
            # its loaders and fits draw from no stream the training uses: a run with the
            # diagnostic trains exactly as one without
            cuda = [self.rt.device] if self.rt.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                out |= self.diagnostic(stage.monitor)
        return out

    def diagnostic(self, name: str) -> dict:
        """The readout of network ``name``'s mask, its AUC, and the two controls (computed once:
        neither changes while the stage trains)."""
        parts = (self.data.dataset(self.items("epoch:labeled")), self.data.dataset(self.items("epoch:val")))
        net = self.method.networks[name]

        def readout_of(predict) -> tuple[float, tuple]:
            with self.method.evaluating():
                got = [readout.maps(predict, part, self.rt.device, self.cfg.seed) for part in parts]
            return readout.readout_dice(*got, seed=self.cfg.seed, thresholds=self.thresholds), got[1]

        if self._controls is None:
            trained = copy.deepcopy(net.state_dict())
            net.load_state_dict(self._random_init[name])  # the network as initialised, before any step
            random_dice = readout_of(self.method.predict(name))[0]
            net.load_state_dict(trained)
            self._controls = {"val_readout_dice_image": readout_of(None)[0],
                              "val_readout_dice_random_init": random_dice}
        dice, val_maps = readout_of(self.method.predict(name))
        out = {"val_readout_dice": dice, "val_mask_auc": readout.auc(*val_maps)} | self._controls
        out["stage1_learned"] = float(dice > max(self._controls.values()))
        return out

    def finish(self, seconds: float) -> dict:
        """Main rank: load the kept model, score validation and (once) the test split, write
        summary.json. Every score stands beside the trivial ones of its split, and a model that
        does not beat predicting foreground everywhere is flagged."""
        kept = load_kept(self.rd.path, self.rt.device)
        cfg = self.cfg
        summary = {"run_dir": str(self.rd.path), "method": cfg.method, "dataset": self.data.source.dataset,
                   "status": "complete", "protocol": cfg.protocol, "resolution": cfg.eval.resolution,
                   "counts": self.data.splits.counts(), "selected": kept.selected, "wall_s": round(seconds, 1),
                   "device": str(self.rt.device), "peak_memory_mb": round(peak_memory_mb(self.rt.device), 1),
                   "pl_cost": self.method.pseudo_label_cost()}
        if evaluate.at_edge(kept.threshold, self.thresholds):
            summary["selected"] = kept.selected | {"threshold_at_edge": True}
            summary["threshold_note"] = (f"the threshold {kept.threshold:.2f} sits at the end of the grid "
                                         f"({self.thresholds[0]:.2f}-{self.thresholds[-1]:.2f}): the "
                                         f"model's probabilities are poorly calibrated, and a structure it "
                                         f"found with less confidence may be erased. Look at them with "
                                         f"`diffseg predict RUN --probabilities`; try longer training (train.epochs) "
                                         f"or other unlabeled-loss weights; `predict --threshold T` overrides "
                                         f"the kept threshold")
        if cfg.protocol == "paper":
            summary["note"] = PAPER_NOTE
        stage1 = self.stage1_diagnostic()
        if stage1:
            summary["stage1"] = stage1
        for part in ("val", "test"):
            summary[part] = score_kept(kept, self.data, part, self.rt,
                                       self.truth(part) if getattr(self.data.splits, part) else None)
        flags = [f"{part} Dice {summary[part]['dice']:.4f} does not beat predicting foreground everywhere "
                 f"({summary[part]['all_foreground_dice']:.4f})" for part in ("val", "test")
                 if summary[part] and not summary[part]["beats_trivial"]]
        if flags:
            summary["warning"] = "; ".join(flags)
        self.rd.write_json("summary.json", summary)  # finish runs on the main rank only
        self.rd.log({"stage": "final", "epoch": cfg.train.epochs, "val_dice": summary["val"].get("dice"),
                     "test_dice": summary["test"].get("dice")})
        test = summary["test"]
        self.log(f"kept {kept.predictor} from epoch {kept.selected['epoch']} (threshold {kept.threshold:.2f}): "
                 f"val dice {summary['val'].get('dice', float('nan')):.4f}, test dice {test.get('dice', float('nan')):.4f}"
                 + (f" (all-foreground {test['all_foreground_dice']:.4f}; scored at {cfg.eval.resolution} size)"
                    if test else ""))
        for flag in flags + ([summary["threshold_note"]] if "threshold_note" in summary else []):
            self.log(f"WARNING: {flag}")
        return summary

    def stage1_diagnostic(self) -> dict:
        """The readout diagnostic of the last stage-1 epoch that has one (from metrics.jsonl, so a
        resumed run has it too): its numbers and whether stage 1 learned."""
        path, last = self.rd.path / "metrics.jsonl", None
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if "val_readout_dice" in record:
                    last = record
        if last is None:
            return {}
        keys = ("val_readout_dice", "val_readout_dice_image", "val_readout_dice_random_init", "val_mask_auc",
                "val_dice_unsupervised", "val_dice_all_foreground")
        return {"epoch": last["epoch"], "learned": bool(last["stage1_learned"])} | {k: last[k] for k in keys}

    def record_divergence(self, exc: Diverged, seconds: float) -> None:
        """A diverged run is a result: its summary says so and why; nothing is scored (the weights
        are garbage), and the last good checkpoint stays for whoever wants to look."""
        if not self.rt.is_main:
            return
        self.rd.write_json("summary.json", {
            "run_dir": str(self.rd.path), "method": self.cfg.method, "dataset": self.data.source.dataset,
            "status": "diverged", "reason": str(exc), "stage": exc.stage, "epoch": exc.epoch + 1, "key": exc.key,
            "val": {}, "test": {}, "wall_s": round(seconds, 1), "device": str(self.rt.device)})
        self.rd.log({"stage": "final", "epoch": exc.epoch + 1, "status": "diverged"})
        self.log(f"DIVERGED: {exc}")


def peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory: the CUDA allocator's peak, or the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
