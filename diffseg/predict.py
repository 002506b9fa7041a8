"""`diffseg predict`: mask PNGs for new images of any size with a run's kept model: each image is
resized to the training size as the cache resizes, and the probabilities are brought back to its
own size as validation and test scoring does (``evaluate.upsample``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.cache import network_shape, resize
from .data.sources import IMAGE_EXTS, read_image
from .errors import DataError
from .data.torchdata import normalise
from .evaluate import slide, upsample
from .infer import load_kept
from .runtime import local


@torch.no_grad()
def predict_folder(run_dir, input_dir, output_dir, probabilities: bool = False, device: str = "auto",
                   log=print) -> list[Path]:
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    files = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS) if input_dir.is_dir() else []
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in input folder {input_dir}")
    rt = local(device)
    kept = load_kept(run_dir, rt.device)
    size, scale = kept.cfg.data.size, kept.cfg.data.scale
    gen = torch.Generator(device=rt.device).manual_seed(kept.cfg.seed)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, path in enumerate(files):
        image = read_image(path, kept.channels)
        h, w = image.shape[:2]
        # resized exactly as the cache resized the training and test images
        small = resize(image, network_shape((h, w), size, scale), False)
        x = torch.from_numpy(small.astype(np.float32)).permute(2, 0, 1)[None] / 255.0
        x = normalise(x, kept.mean, kept.std).to(rt.device)
        with rt.autocast():
            probs = (slide(lambda t: kept.scores(t, gen).float().softmax(1), x, size, kept.cfg.eval.overlap)
                     if scale > 0 else kept.scores(x, gen).float().softmax(1))
        prob = upsample(probs[0, 1].float().cpu().numpy(), (h, w))
        out = output_dir / f"{path.stem}.png"
        Image.fromarray(((prob > kept.threshold) * 255).astype(np.uint8)).save(out)
        written.append(out)
        if probabilities:
            prob_path = output_dir / f"{path.stem}_prob.png"
            Image.fromarray((prob * 255).round().astype(np.uint8)).save(prob_path)
            written.append(prob_path)
        log(f"[{i + 1}/{len(files)}] {path.name} ({w}x{h}) -> {out}")
    return written
