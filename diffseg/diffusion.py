"""The Gaussian diffusion process, kept apart from the networks (which are passed in)."""
from __future__ import annotations

import math

import torch


def make_betas(schedule: str, steps: int) -> torch.Tensor:
    if schedule == "linear":
        scale = 1000 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64).clamp(max=0.999)
    if schedule == "cosine":
        s = 0.008
        t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    if schedule == "sigmoid":  # the paper's: start -3, end 3, tau 1
        start, end, tau = -3.0, 3.0, 1.0
        t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))
        abar = (-torch.sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
        return (1 - abar[1:] / abar[:-1]).clamp(1e-8, 0.999)
    raise ValueError(f"unknown beta schedule '{schedule}' (sigmoid, linear, cosine)")


def _on(generator: torch.Generator | None, device) -> torch.device:
    """Where to draw: on the generator's device when there is one. Evaluation passes a CPU
    generator, so a model's noise, and with it its scores, are the same on a GPU and on a CPU."""
    return generator.device if generator is not None else torch.device(device)


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1, ...) to broadcast against ``like``."""
    out = values.to(like.device)[t].to(like.dtype)
    return out.view(-1, *([1] * (like.dim() - 1)))


class Diffusion:
    def __init__(self, steps: int = 1000, schedule: str = "sigmoid"):
        self.steps, self.schedule = steps, schedule
        self.betas = make_betas(schedule, steps)
        abar = torch.cumprod(1 - self.betas, 0)
        self.sqrt_abar = abar.sqrt().float()
        self.sqrt_one_minus_abar = (1 - abar).sqrt().float()

    def sample_t(self, n: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randint(0, self.steps, (n,), device=_on(generator, device), generator=generator).to(device)

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        noise = torch.randn_like(z0) if noise is None else noise
        return _at(self.sqrt_abar, t, z0) * z0 + _at(self.sqrt_one_minus_abar, t, z0) * noise

    def x0_from_eps(self, zt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (zt - _at(self.sqrt_one_minus_abar, t, zt) * eps) / _at(self.sqrt_abar, t, zt)

    def eps_from_x0(self, zt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (zt - _at(self.sqrt_abar, t, zt) * x0) / _at(self.sqrt_one_minus_abar, t, zt)

    def start_timesteps(self, n: int, device, start_t: int, generator=None) -> torch.Tensor:
        if start_t >= 0:
            return torch.full((n,), start_t, device=device, dtype=torch.long)
        return self.sample_t(n, device, generator)

    def predict_mask(self, mask_net, image: torch.Tensor, classes: int = 2, sample_steps: int = 1,
                     start_t: int = -1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mask x0 estimate (B, K, *spatial) in [-1, 1] scale, from the noised empty mask.

        One step is the paper's. With more, DDIM (eta = 0) walks from t down to 0; only the
        last call keeps a graph, so training cost grows with the forward passes, not memory.
        """
        b = image.shape[0]
        empty = torch.full((b, classes, *image.shape[2:]), -1.0, device=image.device, dtype=image.dtype)
        empty[:, 0] = 1.0  # one-hot background mapped to [-1, 1]
        t = self.start_timesteps(b, image.device, start_t, generator)
        noise = torch.randn(empty.shape, device=_on(generator, image.device), dtype=image.dtype,
                            generator=generator).to(image.device)
        zt = self.q_sample(empty, t, noise)
        # per-sample schedule t -> 0 in sample_steps calls
        fractions = torch.linspace(1, 0, sample_steps + 1, device=image.device)[:-1]
        for i, frac in enumerate(fractions):
            ti = (t.float() * frac).round().long()
            last = i == sample_steps - 1
            with torch.set_grad_enabled(torch.is_grad_enabled() and last):
                x0 = mask_net(zt, image, ti)
            if last:
                return x0
            t_next = (t.float() * fractions[i + 1]).round().long()
            x0c = x0.clamp(-1, 1)
            eps = self.eps_from_x0(zt, ti, x0c)
            zt = _at(self.sqrt_abar, t_next, zt) * x0c + _at(self.sqrt_one_minus_abar, t_next, zt) * eps
        raise AssertionError("unreachable")
