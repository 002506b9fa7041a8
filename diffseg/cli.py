"""The `diffseg` command (also `python -m diffseg`). Each subcommand is a thin wrapper."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import config as config_mod
from .errors import DiffsegError, Diverged


def _common(p: argparse.ArgumentParser, config_default: str | None, required: bool | None = None) -> None:
    p.add_argument("--config", default=config_default,
                   required=config_default is None if required is None else required,
                   help="YAML file or shipped config name (debug, debug3d, glas, ph2, drive, hmeps, la)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. --set method=cps cps.consistency=0.5 data.labeled_ratio=0.1")
    _where(p)


def _where(p: argparse.ArgumentParser, device: bool = True) -> None:
    """Where a run executes: not part of its config (a run resumes elsewhere unchanged)."""
    p.add_argument("--data-root", default="", help="dataset root (default: $DIFFSEG_DATA or ../shared/data)")
    p.add_argument("--cache-dir", default="", help="preprocessing cache (default: $DIFFSEG_CACHE or ~/.cache/diffseg)")
    if device:
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _load(args, extra: dict | None = None):
    overrides = dict(config_mod.parse_override(o) for o in args.overrides)
    return config_mod.load(args.config, (extra or {}) | overrides)


def _runtime(args):
    from .runtime import local

    return local(args.device, amp=not getattr(args, "no_amp", False),
                 num_workers=getattr(args, "loader_workers", 0), data_root=args.data_root, cache_dir=args.cache_dir)


def cmd_data_info(args) -> None:
    from .datainfo import format_info, info

    cfg = _load(args, {"data.dataset": args.name})
    print(format_info(info(cfg.data, args.data_root, args.cache_dir), cfg.data))


def cmd_train(args, extra=None) -> None:
    from .loop import default_run_dir, fit

    cfg = _load(args, extra)
    run_dir = (Path(args.run_dir) if args.run_dir else default_run_dir(cfg)).expanduser().resolve()
    check_run_dir(run_dir)
    summary = fit(cfg, run_dir, _runtime(args), pretrained=args.pretrained)
    print(f"summary: {run_dir / 'summary.json'}")
    val = f" (val {summary['val']['dice']:.4f})" if summary.get("val") else " (no validation split)"
    print(f"final test dice {summary['test']['dice']:.4f}{val}")


def check_run_dir(run_dir: Path) -> None:
    """A run folder to train into: a folder (or to be made) and not a finished run, whose
    results are final (re-scoring it would replace its summary, with other data if the data
    root changed)."""
    check_folders(run_dir, "--run-dir", run_dir)
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            status = json.loads(summary.read_text()).get("status", "complete")
        except (ValueError, AttributeError):
            status = "unreadable"
        raise DiffsegError(f"--run-dir {run_dir} holds a finished run (summary.json: {status}); its results are "
                           f"final: score it with `diffseg eval {run_dir}`, or train into a new --run-dir")


def cmd_debug(args) -> None:
    from .data import dims

    if args.config is None:  # the tiny run's own settings: volumes need smaller networks and patches
        args.config = "debug3d" if args.dataset and dims(args.dataset) == 3 else "debug"
    cmd_train(args, {"data.dataset": args.dataset} if args.dataset else {})


def cmd_eval(args) -> None:
    from .data import Splits, prepare
    from .kept import load_kept, score_kept

    run_dir = Path(args.run_dir)
    if not args.data_root:  # the data it was trained on, as its folder recorded it
        from .rundir import recorded_data_root

        args.data_root = recorded_data_root(run_dir)
        if args.data_root and not Path(args.data_root).is_dir():
            raise DiffsegError(f"{run_dir} was trained on data under {args.data_root}, which is not there now: "
                               f"give --data-root")
        if args.data_root:
            print(f"data root: {args.data_root} (the one {run_dir} was trained on; --data-root to use another)",
                  file=sys.stderr)
    rt = _runtime(args)
    kept = load_kept(run_dir, rt.device)
    cfg = kept.cfg
    data = prepare(cfg.data, Splits.load(run_dir / "splits.json"), root=rt.data_root, cache_dir=rt.cache_dir)
    truth = data.truth(args.split, args.resolution or cfg.eval.resolution)
    result = score_kept(kept, data, args.split, rt, truth)
    result |= {"method": cfg.method, "predictor": kept.predictor, "split": args.split,
               "resolution": truth.resolution}
    print(json.dumps(result, indent=1))


def cmd_predict(args) -> None:
    from .predict import predict_folder

    written = predict_folder(args.run_dir, args.input, args.output, args.probabilities, args.device,
                             overwrite=args.overwrite, threshold=args.threshold)
    print(f"wrote {len(written)} files to {args.output}")


def check_folders(path: Path, flag: str, folder: Path) -> None:
    """Every existing part of ``folder`` (``path`` itself or its parent) is a folder, so that
    writing there cannot fail after the work."""
    for part in [folder, *folder.parents]:
        if part.exists() and not part.is_dir():
            raise DiffsegError(f"{flag} {path}: {part} is a file, not a folder")


def refuse_existing(path: Path, overwrite: bool) -> None:
    """A command's --output file that already exists is someone's earlier result: kept unless told."""
    if path.is_dir():
        raise DiffsegError(f"--output {path} is a folder; name a file")
    check_folders(path, "--output", path.parent)
    if path.exists() and not overwrite:
        raise DiffsegError(f"--output {path} exists (an earlier result); give another path, or --overwrite "
                           f"to replace it")


def cmd_bench(args) -> None:
    from .bench import run_bench, save

    refuse_existing(Path(args.output), args.overwrite)  # before minutes of measuring, not after
    cfg = _load(args)
    result = run_bench(cfg, args.steps, runtime=_runtime(args))
    save(result, Path(args.output))
    print(f"wrote {args.output}")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="the run folder (default: runs/<name>-<method>-<dataset>-<time>-<pid>); "
                                      "an existing one of the same config is resumed")
    p.add_argument("--pretrained", help="pretrained.pt of an earlier stage 1 (skips it)")
    p.add_argument("--no-amp", action="store_true", help="full precision on CUDA (bf16 autocast otherwise)")
    p.add_argument("--loader-workers", type=int, default=0, help="data loader worker processes")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffseg", description="Semi-supervised segmentation with diffusion models")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    d = data.add_parser("info", help="counts, sizes, foreground fraction and splits of a dataset")
    d.add_argument("name")
    d.add_argument("--config", default="debug",
                   help="the config whose splits and sizes to describe (default: debug, what `diffseg debug "
                        "--dataset NAME` runs; e.g. glas, paper)")
    d.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="e.g. --set data.labeled_ratio=0.05 data.size=64")
    _where(d, device=False)
    d.set_defaults(fn=cmd_data_info)

    dbg = sub.add_parser("debug", help="tiny local run (synthetic data unless --dataset), CPU or one GPU")
    dbg.add_argument("--dataset")
    _run_options(dbg)
    _common(dbg, None, required=False)  # debug, or debug3d for a volume dataset
    dbg.set_defaults(fn=cmd_debug)

    tr = sub.add_parser("train", help="a full training run from a config (--config is required)")
    _run_options(tr)
    _common(tr, None)
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="score a run's kept model on a split")
    ev.add_argument("run_dir")
    ev.add_argument("--split", choices=("val", "test"), default="test")
    ev.add_argument("--resolution", choices=("original", "training"),
                    help="score at each image's own size or at the training size (default: the run's eval.resolution)")
    _where(ev)
    ev.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("predict", help="masks for a folder of images (PNG) or volumes (NIfTI, with their spacing)")
    pr.add_argument("run_dir")
    pr.add_argument("--input", required=True)
    pr.add_argument("--output", required=True)
    pr.add_argument("--probabilities", action="store_true", help="also write <name>_prob.png (<name>_prob.nii.gz)")
    pr.add_argument("--threshold", type=float, default=None,
                    help="foreground probability to cut at (default: the threshold the run kept)")
    pr.add_argument("--overwrite", action="store_true",
                    help="replace files of the same names already in --output (refused otherwise)")
    pr.add_argument("--device", default="auto")
    pr.set_defaults(fn=cmd_predict)

    be = sub.add_parser("bench", help="steps/s and peak memory of each stage and of mask prediction")
    be.add_argument("--steps", type=int, default=5)
    be.add_argument("--no-amp", action="store_true", help="full precision on CUDA")
    be.add_argument("--output", default="experiments/results/bench.json")
    be.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    _common(be, "debug")
    be.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except Diverged as exc:  # a result, not a crash: the run folder's summary.json records it
        print(f"diverged: {exc}", file=sys.stderr)
        return 3
    except DiffsegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was saved stays, and the same command resumes it
        print("interrupted: the run folder keeps its last finished epoch; run the same command to resume",
              file=sys.stderr)
        return 130
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write the storage refused outside the durable writers
        from .durable import storage_error

        error = storage_error(exc, exc.filename or "a file")
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
