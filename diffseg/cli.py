"""The `diffseg` command (also `python -m diffseg`). Each subcommand is a thin wrapper."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config as config_mod
from .errors import DiffsegError


def _common(p: argparse.ArgumentParser, config_default: str | None) -> None:
    p.add_argument("--config", default=config_default, help="YAML file or shipped config name")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. --set loss.cps=0.5 data.labeled_ratio=0.1")
    p.add_argument("--data-root", help="dataset root (default: $DIFFSEG_DATA or ../shared/data)")


def _load(args, extra: dict | None = None):
    overrides = dict(config_mod.parse_override(o) for o in args.overrides)
    if getattr(args, "data_root", None):
        overrides.setdefault("data.root", args.data_root)
    return config_mod.load(args.config, (extra or {}) | overrides)


def cmd_data_info(args) -> None:
    from .datainfo import format_info, info

    cfg = _load(args, {"data.dataset": args.name})
    print(format_info(info(cfg.data), cfg.data))


def cmd_train(args, extra=None) -> None:
    from .run import default_run_dir, train

    cfg = _load(args, extra)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(cfg)
    summary = train(cfg, run_dir, pretrained=args.pretrained)
    print(f"summary: {run_dir / 'summary.json'}")
    print(f"final test dice {summary['test']['dice']:.4f} (val {summary['val']['dice']:.4f})")


def cmd_debug(args) -> None:
    extra = {"data.dataset": args.dataset} if args.dataset else {}
    if args.device:
        extra["device"] = args.device
    cmd_train(args, extra)


def cmd_eval(args) -> None:
    from .evaluate import collect, score
    from .data import prepare, Splits
    from .diffusion import Diffusion
    from .run import load_best
    from .runtime import local

    run_dir = Path(args.run_dir)
    rt = local(args.device)
    kept = load_best(run_dir, rt.device)
    cfg = kept["cfg"]
    data = prepare(cfg.data, Splits.load(run_dir / "splits.json"))
    probs, gts, fovs = collect(kept["net"], data.dataset(args.split), Diffusion(cfg.diffusion.steps,
                               cfg.diffusion.schedule), cfg.diffusion, rt, cfg.seed)
    result = score(probs, gts, fovs, kept["best"]["threshold"], data.source.spacing)
    result["model"], result["split"] = kept["model"], args.split
    print(json.dumps(result, indent=1))


def cmd_predict(args) -> None:
    from .predict import predict_folder

    written = predict_folder(args.run_dir, args.input, args.output, args.probabilities, args.device)
    print(f"wrote {len(written)} files to {args.output}")


def cmd_bench(args) -> None:
    from .bench import run_bench, save

    cfg = _load(args)
    result = run_bench(cfg, args.steps, device=args.device)
    save(result, Path(args.output))
    print(f"wrote {args.output}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffseg", description="Semi-supervised segmentation with diffusion models")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    d = data.add_parser("info", help="counts, sizes, foreground fraction and splits of a dataset")
    d.add_argument("name")
    _common(d, None)
    d.set_defaults(fn=cmd_data_info)

    dbg = sub.add_parser("debug", help="tiny local run (synthetic data unless --dataset), CPU or one GPU")
    dbg.add_argument("--dataset")
    dbg.add_argument("--device")
    dbg.add_argument("--run-dir")
    dbg.add_argument("--pretrained", help="teacher weights from an earlier stage 1 (skips it)")
    _common(dbg, "debug")
    dbg.set_defaults(fn=cmd_debug)

    tr = sub.add_parser("train", help="a full training run from a config")
    tr.add_argument("--run-dir")
    tr.add_argument("--pretrained", help="teacher weights from an earlier stage 1 (skips it)")
    _common(tr, None)
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="score a run's kept model on a split")
    ev.add_argument("run_dir")
    ev.add_argument("--split", choices=("val", "test"), default="test")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("predict", help="mask PNGs for a folder of images")
    pr.add_argument("run_dir")
    pr.add_argument("--input", required=True)
    pr.add_argument("--output", required=True)
    pr.add_argument("--probabilities", action="store_true", help="also write <name>_prob.png")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(fn=cmd_predict)

    be = sub.add_parser("bench", help="steps/s and peak memory of each stage and of mask prediction")
    be.add_argument("--steps", type=int, default=5)
    be.add_argument("--device", default="auto")
    be.add_argument("--output", default="experiments/results/bench.json")
    _common(be, "debug")
    be.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
