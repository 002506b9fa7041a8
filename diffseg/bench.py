"""`diffseg bench`: steps per second and peak memory of every method's training step, the paper's
stage 1 and rounds, and mask prediction."""
from __future__ import annotations

import json
import platform
import threading
import time
from pathlib import Path

import psutil
import torch

from . import config as config_mod
from .loop import train_step
from .methods import METHODS, Stage, Step, build_method
from .runtime import local


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.proc, self.stop = psutil.Process(), threading.Event()
            self.peak = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.stop.set()
            self.thread.join()


def timed(fn, steps: int, warmup: int, device) -> tuple[float, int]:
    for _ in range(warmup):
        fn()
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
    return steps / elapsed, mem.peak


def run_bench(cfg, steps: int = 5, warmup: int = 1, runtime=None, log=print) -> dict:
    """Steps per second of one training step of every method (the same batch, size and width),
    of the paper's stage 1 and rounds, and of mask prediction; ``relative_cost`` is a method's
    step time over the labeled-only U-Net's, measured side by side in this one run."""
    rt = runtime or local()
    b, size = cfg.train.batch_size, cfg.data.size
    x = torch.randn(b, 3, size, size, device=rt.device)
    y = (torch.rand(b, size, size, device=rt.device) > 0.5).long()
    rows = []

    def record(name: str, fn, **extra):
        rate, peak = timed(fn, steps, warmup, rt.device)
        rows.append({"name": name, "steps_per_s": round(rate, 3), "peak_memory_mb": round(peak / 2**20, 1)} | extra)
        log(f"{name:<40} {rate:8.3f} steps/s  peak {peak / 2**20:9.1f} MB")

    def stepper(c, stage: Stage):
        torch.manual_seed(c.seed)
        method = build_method(c, 3, rt.prepare_model)
        method.train_mode(True)
        batch = {"labeled": {"image": x, "mask": y}, "unlabeled": {"image": x}, "images": {"image": x}}
        at = Step(0, 0, 1, 1)

        def one():
            train_step(method, stage, batch, at, rt)
        return method, one

    for name in METHODS:
        c = config_mod.apply_overrides(cfg, {"method": name})
        _, one = stepper(c, METHODS[name].stages[-1])
        record(f"train step {name}", one, method=name)
    paper = config_mod.apply_overrides(cfg, {"method": "diffusion_cps"})
    first_stage = METHODS["diffusion_cps"].stages[0]
    _, stage1 = stepper(paper, first_stage)
    record("diffusion_cps stage1 step", stage1, method="diffusion_cps", stage=first_stage.name)
    settings = paper.diffusion_cps
    for mode in ("independent", "chained"):
        for rounds in sorted({1, 3, settings.rounds}):
            c = config_mod.apply_overrides(paper, {"diffusion_cps.rounds": rounds, "diffusion_cps.round_mode": mode})
            _, one = stepper(c, METHODS["diffusion_cps"].stages[-1])
            record(f"diffusion_cps R={rounds} {mode}", one, method="diffusion_cps", rounds=rounds, round_mode=mode)
    base = next(r["steps_per_s"] for r in rows if r["name"] == "train step supervised")
    for r in rows:
        if r["name"].startswith("train step"):
            r["relative_cost"] = round(base / r["steps_per_s"], 2)
    for sample_steps in (1, 5, 10):
        c = config_mod.apply_overrides(paper, {
            "diffusion_cps.diffusion.sample_steps": min(sample_steps, settings.diffusion.steps)})
        torch.manual_seed(c.seed)
        method = build_method(c, 3, rt.prepare_model)
        method.train_mode(False)
        first = method.predict(method.predictors[0])  # the paper's first predictor: its diffusion segmenter

        @torch.no_grad()
        def predict(first=first):
            with rt.autocast():
                first(x)

        record(f"predict sample_steps={sample_steps}", predict, sample_steps=sample_steps)
    hardware = {"device": str(rt.device), "cpu": platform.processor() or platform.machine(),
                "cpu_count": psutil.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if rt.device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(rt.device)
    return {"hardware": hardware, "batch_size": b, "size": size, "width": cfg.model.width,
            "depth": cfg.model.depth, "amp": rt.mixed_precision, "rows": rows}


def save(result: dict, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))
