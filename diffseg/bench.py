"""`diffseg bench`: training steps per second and peak memory of each stage, and mask prediction."""
from __future__ import annotations

import json
import platform
import threading
import time
from pathlib import Path

import psutil
import torch

from . import config as config_mod
from .diffusion import Diffusion
from .runtime import local
from .students import build_student, build_teacher, predict_scores
from .teacher import cycle_loss
from .training import cotrain_loss


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


def run_bench(cfg, steps: int = 5, warmup: int = 1, device: str = "auto", log=print) -> dict:
    rt = local(device, cfg.amp)
    torch.manual_seed(cfg.seed)
    b, size = cfg.train.batch_size, cfg.data.size
    diffusion = Diffusion(cfg.diffusion.steps, cfg.diffusion.schedule)
    teacher = rt.prepare_model(build_teacher(cfg, 3))
    student = rt.prepare_model(build_student(cfg, 3))
    opt = torch.optim.Adam(list(teacher.parameters()) + list(student.parameters()), lr=1e-4)
    x = torch.randn(b, 3, size, size, device=rt.device)
    y = (torch.rand(b, size, size, device=rt.device) > 0.5).long()
    rows = []

    def record(name: str, fn, **extra):
        rate, peak = timed(fn, steps, warmup, rt.device)
        rows.append({"name": name, "steps_per_s": round(rate, 3), "peak_memory_mb": round(peak / 2**20, 1)} | extra)
        log(f"{name:<40} {rate:8.3f} steps/s  peak {peak / 2**20:9.1f} MB")

    def stage1():
        with rt.autocast():
            loss = cycle_loss(teacher, diffusion, x)
        opt.zero_grad()
        loss.backward()
        opt.step()

    record("stage1", stage1)
    for mode in ("independent", "chained"):
        for rounds in sorted({1, 3, cfg.rounds}):
            c = config_mod.apply_overrides(cfg, {"rounds": rounds, "round_mode": mode})

            def stage2(c=c):
                with rt.autocast():
                    loss, _ = cotrain_loss(teacher, student, diffusion, c, x, y, x, 0)
                opt.zero_grad()
                loss.backward()
                opt.step()

            record(f"stage2 R={rounds} {mode}", stage2, rounds=rounds, round_mode=mode)
    teacher.eval()
    for sample_steps in (1, 5, 10):
        c = config_mod.apply_overrides(cfg, {"diffusion.sample_steps": min(sample_steps, cfg.diffusion.steps)})

        @torch.no_grad()
        def predict(c=c):
            with rt.autocast():
                predict_scores(teacher, x, diffusion, c.diffusion)

        record(f"predict sample_steps={sample_steps}", predict, sample_steps=sample_steps)
    hardware = {"device": str(rt.device), "cpu": platform.processor() or platform.machine(),
                "cpu_count": psutil.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if rt.device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(rt.device)
    return {"hardware": hardware, "batch_size": b, "size": size, "width": cfg.model.width,
            "depth": cfg.model.depth, "amp": cfg.amp and rt.device.type == "cuda", "rows": rows}


def save(result: dict, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1))
