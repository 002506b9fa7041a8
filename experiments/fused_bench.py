"""k runs trained as one fused network against k separate networks, step for step (issue 18,
item 5: integrate fused seed groups only where they are at least 2x faster).

    python -m experiments.fused_bench --output experiments/results/fused_cpu.json [--device cuda]

One training step is a forward, a cross-entropy backward and an SGD step, of k separate U-Nets
(one after another, as k runs sharing a device take turns) or of one ``FusedUNet`` of k runs,
on random batches of the shapes a preset trains. The two are timed alternately, ``--repeats``
times each after a warm-up, in one process, and the median of each gives the speed-up
(separate / fused: above 1, fusing is faster).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from diffseg.cli import refuse_existing
from diffseg.errors import DiffsegError
from diffseg.fused import FusedUNet
from diffseg.nets import UNet

# (name, image size, width, depth, batch): the small and mid presets' U-Nets, and the paper's
SETTINGS = {"small": (64, 16, 3, 8), "mid": (128, 16, 4, 4), "paper": (128, 64, 4, 8)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(setting: str, k: int, device: torch.device, repeats: int) -> dict:
    size, width, depth, batch = SETTINGS[setting]
    torch.manual_seed(0)
    nets = [UNet(3, 2, width, depth, dropout=False, time_embedding=False).to(device) for _ in range(k)]
    fused = FusedUNet.from_nets(nets, 3, 2, width, depth, dropout=False, time_embedding=False).to(device)
    opts = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for n in nets]
    fused_opt = torch.optim.SGD(fused.parameters(), lr=0.01, momentum=0.9)
    xs = [torch.randn(batch, 3, size, size, device=device) for _ in range(k)]
    ys = [torch.randint(0, 2, (batch, size, size), device=device) for _ in range(k)]
    x_fused = torch.cat(xs, 1)

    def separate() -> None:
        for net, opt, x, y in zip(nets, opts, xs, ys):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

    def together() -> None:
        fused_opt.zero_grad(set_to_none=True)
        outs = fused.split(fused(x_fused))
        sum(torch.nn.functional.cross_entropy(o, y) for o, y in zip(outs, ys)).backward()
        fused_opt.step()

    times = {"separate": [], "fused": []}
    for i in range(repeats + 2):  # two warm-up rounds, not counted
        for name, step in (("separate", separate), ("fused", together)):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    sep, fus = statistics.median(times["separate"]), statistics.median(times["fused"])
    return {"setting": setting, "k": k, "image": size, "width": width, "depth": depth, "batch": batch,
            "separate_s": round(sep, 4), "fused_s": round(fus, 4), "speedup": round(sep / fus, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--settings", default="small,mid", help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--k", default="2,4", help="runs per group, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", default="", help="also write the figures to this JSON file (a new file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = p.parse_args(argv)
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        print(f"error: --settings: unknown {', '.join(unknown)}; choose from {', '.join(SETTINGS)}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else None
    try:
        if out is not None:
            refuse_existing(out, args.overwrite)  # before measuring, not after
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    rows = []
    for setting in settings:
        for k in (int(v) for v in args.k.split(",")):
            rows.append(measure(setting, k, device, args.repeats))
            r = rows[-1]
            print(f"{setting:6s} k={k}: separate {r['separate_s']:.3f} s, fused {r['fused_s']:.3f} s a step "
                  f"of all {k} runs: {r['speedup']:.2f}x", flush=True)
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads)", "torch": torch.__version__, "rows": rows}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
