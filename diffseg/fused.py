"""k U-Nets of one architecture trained as one network (HFTA, Wang et al., MLSys 2021): a
prototype, measured by ``experiments/fused_bench.py`` before anything uses it (issue 18, item 5).

Run j's tensors are channel block j of each fused tensor: the input is ``[B, k*C, ...]``, every
convolution has ``groups=k`` (block j of its output sees only block j of its input), BatchNorm
over ``k*c`` channels keeps per-channel, hence per-run, statistics, and pooling, upsampling and
activations act per channel. The one place where runs meet in a U-Net, the decoder's
concatenation of upsampled and skip features, concatenates run by run. The timestep MLP is a
batched matrix product with one weight matrix per run. Since no parameter is shared, the
gradient of the sum of the k runs' losses with respect to run j's block is run j's own
gradient, and an optimizer whose update is elementwise (SGD, momentum, Adam, weight decay)
steps each run as its own optimizer would. What couples runs and is therefore not allowed with
fused training: clipping by a global gradient norm, and dropout's random draws (equal in
distribution, not draw for draw; ``dropout=False`` for an exact comparison)."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .blocks import CONV, NORM
from .nets import UNet, level_widths, timestep_embedding


def fused_block(k: int, cin: int, cout: int, act, dropout: float, dims: int) -> nn.Sequential:
    """``blocks.conv_block`` for k runs."""
    conv, norm = CONV[dims], NORM[dims]
    layers = [conv(k * cin, k * cout, 3, padding=1, groups=k), norm(k * cout), act()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers += [conv(k * cout, k * cout, 3, padding=1, groups=k), norm(k * cout), act()]
    return nn.Sequential(*layers)


def cat_per_run(k: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a_j, b_j], 1)`` for every run j, as one tensor of k channel blocks."""
    n, rest = a.shape[0], a.shape[2:]
    return torch.cat([a.view(n, k, -1, *rest), b.view(n, k, -1, *rest)], dim=2).view(n, -1, *rest)


# the timestep MLP's fused parameters and the UNet names of each run's part
TIME_NAMES = {"t_w1": "time.0.weight", "t_b1": "time.0.bias", "t_w2": "time.2.weight", "t_b2": "time.2.bias"}


class FusedUNet(UNet):
    """``nets.UNet`` k times over, as one module (see the module's docstring): UNet's forward
    over grouped layers, with its own timestep embedding and decoder join."""

    def __init__(self, k: int, in_ch: int, out_ch: int, width: int = 64, depth: int = 4,
                 dropout: bool = True, time_embedding: bool = True, dims: int = 2):
        nn.Module.__init__(self)  # UNet's layers are built here, grouped, not by UNet.__init__
        self.k, self.dims, self.out_ch = k, dims, out_ch
        widths = level_widths(width, depth)
        drops = torch.linspace(0.05, 0.4, depth + 1).tolist() if dropout else [0.0] * (depth + 1)
        self.inc = fused_block(k, in_ch, widths[0], nn.LeakyReLU, drops[0], dims)
        if time_embedding:  # per run: Linear(64, 4w), SiLU, Linear(4w, w0), as batched products
            self.t_w1 = nn.Parameter(torch.empty(k, 64, 4 * width))
            self.t_b1 = nn.Parameter(torch.zeros(k, 1, 4 * width))
            self.t_w2 = nn.Parameter(torch.empty(k, 4 * width, widths[0]))
            self.t_b2 = nn.Parameter(torch.zeros(k, 1, widths[0]))
            for w in (self.t_w1, self.t_w2):  # as nets.UNet: kaiming over each run's fan-in
                nn.init.normal_(w, std=math.sqrt(2 / (1 + 0.01 ** 2)) / math.sqrt(w.shape[1]))
        self.time_embedding = time_embedding
        self.down = nn.ModuleList(fused_block(k, widths[i], widths[i + 1], nn.LeakyReLU, drops[i + 1], dims)
                                  for i in range(depth))
        self.upsample = (nn.ModuleList(nn.ConvTranspose3d(k * widths[i + 1], k * widths[i + 1], 2, stride=2, groups=k)
                                       for i in reversed(range(depth))) if dims == 3 else None)
        self.up = nn.ModuleList(fused_block(k, widths[i + 1] + widths[i], widths[i], nn.ReLU, 0.0, dims)
                                for i in reversed(range(depth)))
        self.out = CONV[dims](k * widths[0], k * out_ch, 1, groups=k)

    # forward is UNet's: the input is [B, k*C, ...], t is [k, B] (run j's timesteps in row j),
    # and the output [B, k*out_ch, ...] (``split`` gives the k outputs)

    def add_time(self, h: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        if not self.time_embedding:
            return h
        e = timestep_embedding(t.reshape(-1)).view(self.k, t.shape[1], -1)  # [k, B, 64]
        e = torch.baddbmm(self.t_b2, F.silu(torch.baddbmm(self.t_b1, e, self.t_w1)), self.t_w2)
        return h + e.transpose(0, 1).reshape(h.shape[0], -1, *[1] * self.dims)

    def join(self, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return cat_per_run(self.k, h, skip)

    def split(self, out: torch.Tensor) -> list[torch.Tensor]:
        """The k runs' outputs of ``forward``."""
        return list(out.view(out.shape[0], self.k, self.out_ch, *out.shape[2:]).unbind(1))

    @classmethod
    def from_nets(cls, nets: list[UNet], in_ch: int, out_ch: int, width: int, depth: int,
                  dropout: bool, time_embedding: bool) -> "FusedUNet":
        """The fused network holding ``nets``' weights, buffers included (BatchNorm's running
        statistics), run j in block j."""
        fused = cls(len(nets), in_ch, out_ch, width, depth, dropout, time_embedding, nets[0].dims)
        state = fused.state_dict()
        separate = [n.state_dict() for n in nets]
        with torch.no_grad():
            for name, value in state.items():
                if name in TIME_NAMES:
                    parts = [s[TIME_NAMES[name]] for s in separate]
                    value.copy_(torch.stack([p.T if name.startswith("t_w") else p[None] for p in parts]))
                elif name.endswith("num_batches_tracked"):
                    value.copy_(separate[0][name])
                else:
                    value.copy_(torch.cat([s[name] for s in separate], dim=0))
        return fused

    def run_tensors(self, j: int) -> dict[str, torch.Tensor]:
        """Run j's block of every parameter and buffer, under ``nets.UNet``'s names (to compare
        with, or load into, a separate network: ``UNet.load_state_dict``)."""
        return self.run_view(self.state_dict(), j)

    def run_grads(self, j: int) -> dict[str, torch.Tensor]:
        """Run j's block of every gradient, under ``nets.UNet``'s names."""
        return self.run_view({n: p.grad for n, p in self.named_parameters() if p.grad is not None}, j)

    def run_view(self, tensors: dict[str, torch.Tensor], j: int) -> dict[str, torch.Tensor]:
        """Run j's part of fused tensors named as this module names them, under UNet's names."""
        out = {}
        for name, value in tensors.items():
            if name in TIME_NAMES:  # [k, in, out] weights and [k, 1, out] biases: UNet's Linear layers
                out[TIME_NAMES[name]] = value[j].T if name.startswith("t_w") else value[j, 0]
            elif name.endswith("num_batches_tracked"):  # one count, the same for every run
                out[name] = value
            else:
                size = value.shape[0] // self.k
                out[name] = value[j * size:(j + 1) * size]
        return out
