"""`diffseg data info NAME`: counts, image sizes, foreground fraction and the run's splits."""
from __future__ import annotations

import numpy as np

from . import data as data_mod
from .data import cache, sources


def info(data_cfg, root: str = "", cache_dir: str = "") -> dict:
    source = sources.open_source(data_cfg, root)
    splits = data_mod.torchdata.make_run_splits(source, data_cfg)
    out = {"dataset": source.dataset, "root": str(source.root) if source.root else "(generated)",
           "dim": source.dim, "channels": source.channels,
           "official": {"train": len(source.names("train")), "test": len(source.names("test"))},
           "splits": splits.counts(), "notes": source.notes}
    if source.dim == 2:
        path = cache.ensure(source, data_cfg.size, cache_dir, scale=data_cfg.scale)
        with cache.open_cache(path) as fh:
            shapes, fg = fh["orig_shape"][()], fh["foreground"][()]
        out["cache"] = str(path)
    else:
        shapes, fg = [], []
        for item in source.items:
            image, mask, _ = source.read(item)
            shapes.append(image.shape)
            fg.append(float(mask.mean()))
        shapes, fg = np.array(shapes), np.array(fg)
    sizes = sorted({tuple(int(v) for v in s) for s in shapes})
    out["sizes"] = [list(s) for s in sizes[:5]] + (["..."] if len(sizes) > 5 else [])
    out["n_sizes"] = len(sizes)
    out["largest"] = max((max(s[:2]) for s in sizes), default=0)  # the longest side of any image
    out["foreground"] = {"mean": float(np.mean(fg)), "min": float(np.min(fg)), "max": float(np.max(fg))}
    return out


def format_info(d: dict, data_cfg) -> str:
    s = d["splits"]
    what = (f"labeled_count={data_cfg.labeled_count}" if data_cfg.labeled_count
            else f"labeled_ratio={data_cfg.labeled_ratio}")
    lines = [
        f"dataset     {d['dataset']} ({d['dim']}D, {d['channels']} channel(s)) at {d['root']}",
        f"official    {d['official']['train']} training, {d['official']['test']} test images",
        f"splits      validation {s['val']} (val_ratio={data_cfg.val_ratio}), labeled {s['labeled']} "
        f"({what}), unlabeled {s['unlabeled']}, test {s['test']} (split_seed={data_cfg.split_seed})",
        f"sizes       {d['n_sizes']} distinct (H, W[, D]): {', '.join(str(tuple(x)) if x != '...' else x for x in d['sizes'])}",
        f"foreground  mean {d['foreground']['mean']:.3f} (min {d['foreground']['min']:.3f}, "
        f"max {d['foreground']['max']:.3f}) of pixels per image",
    ]
    if "cache" in d:
        lines.append(f"cache       {d['cache']}")
    largest = d["largest"]
    if d["dim"] == 2 and data_cfg.scale == 0 and largest > 4 * data_cfg.size:
        lines.append(f"advice      images up to {largest} px are resized to {data_cfg.size} px (over 4x smaller): "
                     f"small structures may vanish; train on tiles with --set data.scale=0.5 (or another factor) "
                     f"and evaluation slides a window over each image")
    lines += [f"note        {n}" for n in d["notes"]]
    return "\n".join(lines)
