"""A run's training state on disk: ``checkpoints/last.pt`` at every epoch boundary (the one
before it kept as a fallback), and the networks a sharing stage trained (``pretrained.pt``),
which a later run or another trial may start from instead of training that stage again."""
from __future__ import annotations

from pathlib import Path

from . import checkpoint, config as config_mod
from .errors import DataError
from .methods import Method, stage1_config, stage1_key


def save_last(rd, method: Method, cfg, position: dict, last_report: dict | None) -> None:
    """``position``: the stage, epoch and selection state the run resumes from."""
    checkpoint.save(position | {
        "numbering": 1,  # epochs in it count from 1 (see numbered)
        "networks": {n: net.state_dict() for n, net in method.networks.items()},
        "optimizers": {n: o.state_dict() for n, o in method.optimizers.items()},
        "rng": checkpoint.rng_state(), "config": config_mod.to_dict(cfg), "last_report": last_report},
        rd.last, keep_previous=True)


def load_last(rd, device, log) -> dict:
    """The last checkpoint, or (damaged or missing: a disk error, a bad copy) the one before it,
    said in the log; neither readable is an error naming both files."""
    prev = checkpoint.previous(rd.last)
    try:
        return numbered(checkpoint.load(rd.last, device))
    except (DataError, FileNotFoundError) as exc:
        if not prev.exists():
            raise
        log(f"WARNING: {exc}; resuming from the checkpoint before it, {prev}")
        try:
            return numbered(checkpoint.load(prev, device))
        except DataError as second:
            raise DataError(f"cannot resume {rd.path}: {exc}; and {second}") from None


def numbered(state: dict) -> dict:
    """A checkpoint saved when epochs counted from 0 (no ``numbering``): its kept epoch from 1."""
    if state.get("best") is not None and "numbering" not in state:
        state = state | {"best": state["best"] | {"epoch": state["best"]["epoch"] + 1}, "numbering": 1}
    return state


def restore_networks(method: Method, state: dict) -> None:
    for name, net in method.networks.items():
        net.load_state_dict(state["networks"][name])
    for name, opt in method.optimizers.items():
        opt.load_state_dict(state["optimizers"][name])


def publish_pretrained(path: Path, method: Method, cfg, numerics: dict) -> None:
    """The networks a sharing stage trained, with the settings that made them."""
    checkpoint.save({"method": cfg.method, "key": stage1_key(cfg, numerics), "stage1": stage1_config(cfg, numerics),
                     "networks": {n: method.networks[n].state_dict() for n in method.pretrained}}, path)


def load_pretrained(path: Path, method: Method, cfg, numerics: dict, device) -> str:
    """Load ``pretrained.pt`` into the method's networks; returns the note for the log (which
    stage-1 settings it was made under, where they differ from this run's)."""
    state = checkpoint.load(path, device)
    if not isinstance(state, dict) or set(state.get("networks", {})) != set(method.pretrained):
        raise DataError(f"--pretrained {path} does not hold the networks stage 1 of "
                        f"'{cfg.method}' trains ({', '.join(method.pretrained)})")
    mine, theirs = stage1_config(cfg, numerics), state.get("stage1", {})
    for name, weights in state["networks"].items():
        check_shapes(path, name, method.networks[name].state_dict(), weights, mine, theirs)
        method.networks[name].load_state_dict(weights)
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    return f" (made under other stage-1 settings: {', '.join(differ)})" if differ else ""


def check_shapes(path: Path, name: str, want: dict, got: dict, mine: dict, theirs: dict) -> None:
    """Weights of another architecture are refused naming the settings that differ (width,
    depth, channels, dimensions), not with a page of tensor sizes."""
    if not isinstance(got, dict):
        raise DataError(f"--pretrained {path}: network '{name}' holds no weights")
    wrong = [k for k in want if k not in got or tuple(got[k].shape) != tuple(want[k].shape)]
    extra = [k for k in got if k not in want]
    if not wrong and not extra:
        return
    keys = ("model.width", "model.depth", "model.arch", "data.dataset", "data.size")
    differ = [f"{k} {theirs[k]} there, {mine[k]} here" for k in keys if k in theirs and k in mine and theirs[k] != mine[k]]
    first = wrong[0] if wrong else extra[0]
    shape = lambda d: tuple(d[first].shape) if first in d else "absent"  # noqa: E731
    raise DataError(f"--pretrained {path} was made for another network shape ('{name}': {first} is {shape(got)} "
                    f"there, {shape(want)} here" + (f"; {'; '.join(differ)}" if differ else
                                                     "; the image channels or dimensions differ") + ")")


def after_sharing_stage(method: Method) -> str:
    """The stage a run that loaded ``pretrained.pt`` starts at."""
    names = [s.name for s in method.stages]
    return names[next(i for i, s in enumerate(method.stages) if s.shares) + 1]
