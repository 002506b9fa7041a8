"""The seam between the core and whatever runs it (in-process, or a Ray Train worker).

Everything that differs between a laptop run and a distributed worker comes in through this one
object: the device, rank and world size, data sharding, gradient averaging and reporting.
Gradients are averaged explicitly instead of wrapping models in DistributedDataParallel because
a network may be used in parts, in different combinations and several times per step,
which DDP's module wrapper handles poorly (unused parameters, repeated forwards).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def pick_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a device this machine lacks is refused by name
    before any work starts."""
    from .errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: only auto, cpu, cuda and cuda:N are supported")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"--device {name!r}: this machine has no CUDA GPU (use --device cpu or auto)")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"--device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return device


@dataclass(frozen=True)
class Runtime:
    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    amp: bool = True
    # an epoch's metrics to whoever watches; may repeat an epoch (see diffseg.loop): drop duplicates
    report: Callable[[dict], None] = field(default=lambda metrics: None)
    num_workers: int = 0  # data loader worker processes
    # where the data and the preprocessing cache are on this machine; empty: $DIFFSEG_DATA /
    # $DIFFSEG_CACHE, else the defaults (see diffseg.data)
    data_root: str = ""
    cache_dir: str = ""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    @property
    def mixed_precision(self) -> bool:
        """bf16 autocast on CUDA GPUs that have it. Never fp16: its gradients under- and overflow
        without a loss scaler, so older GPUs run in full precision."""
        return self.amp and self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def numerics(self) -> dict:
        """What of the runtime changes the numbers a run computes (part of a stage-1 key)."""
        return {"workers": self.world_size, "device": self.device.type, "amp": self.mixed_precision}

    # -- mixed precision: bf16 where supported, never on CPU
    def autocast(self):
        if self.mixed_precision:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.device.type == "cuda":  # channels-last convolutions; 5-D weights need the 3-D format
            volumetric = any(p.dim() == 5 for p in model.parameters())
            model = model.to(memory_format=torch.channels_last_3d if volumetric else torch.channels_last)
        self.broadcast_state(model)
        return model

    def loader(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
               drop_last: bool = False) -> DataLoader:
        """Each rank gets its shard; the order depends only on (seed, epoch), so resumes repeat it."""
        sampler = DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank,
                                     shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          drop_last=drop_last, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    # -- collective operations; no-ops in a single process
    def sync_gradients(self, params, bucket_mb: float = 25.0) -> None:
        """Average the gradients of ``params`` (what the stepped optimizers hold) over the ranks,
        flattened into buckets of about ``bucket_mb`` MB: a few all-reduces per step instead of
        one per tensor (what costs on a network between nodes is the number of round trips)."""
        if not self.distributed:
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)  # every rank must join every all_reduce
            grads.append(p.grad)
        limit, bucket, size = bucket_mb * 2**20, [], 0
        for g in grads + [None]:
            if g is not None and (not bucket or (size + g.numel() * g.element_size() <= limit
                                                 and g.dtype == bucket[0].dtype)):
                bucket.append(g)
                size += g.numel() * g.element_size()
                continue
            if bucket:
                flat = torch._utils._flatten_dense_tensors(bucket)
                dist.all_reduce(flat)
                flat /= self.world_size
                for grad, synced in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                    grad.copy_(synced)
            bucket, size = ([g], g.numel() * g.element_size()) if g is not None else ([], 0)

    def broadcast_state(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers (BatchNorm statistics) to every rank."""
        if not self.distributed:
            return
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, 0)

    def share(self, obj):
        """Rank 0's ``obj`` on every rank (work done once, on rank 0, and its result shared)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def mean(self, value: float) -> float:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world_size


def local(device: str = "auto", amp: bool = True, num_workers: int = 0, data_root: str = "",
          cache_dir: str = "") -> Runtime:
    return Runtime(device=pick_device(device), amp=amp, num_workers=num_workers, data_root=data_root or "",
                   cache_dir=cache_dir or "")
