"""`diffseg predict`: masks for new inputs with a run's kept model.

Images: mask PNGs for images of any size; each is resized to the training size as the cache
resizes, and the probabilities are brought back to its own size as validation and test scoring
does (``evaluate.upsample``). Volumes (a run on a 3D dataset): NIfTI masks (``.nii.gz``) with the
input's spacing, from a sliding window of the training patch over the whole volume."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.cache import network_shape, resize
from .data.images import check_header
from .data import nnunet
from .data.sources import IMAGE_EXTS, read_image
from .errors import DataError
from .data.torchdata import normalise
from .data.truth import upsample
from .evaluate import slide
from .kept import load_kept
from .runtime import local


# folders that hold a dataset's ground truth beside its images: never an output
TRUTH_FOLDERS = ("masks", "labels", "labelsTr", "labelsTs")


def check_outputs(inputs: list[tuple[str, Path]], input_dir: Path, output_dir: Path, suffixes: tuple[str, ...],
                  overwrite: bool) -> None:
    """Before anything is computed: the outputs can be written without destroying anything. The
    output folder is not the input folder, holds none of the inputs and is no dataset's ground
    truth; no two inputs share an output name; no existing file is replaced unless
    ``overwrite``. ``inputs``: (output stem, input path); ``suffixes``: what each stem gets."""
    out = output_dir.resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise DataError(f"--output {output_dir} is a file; give a folder (it is made if missing)")
    if out == input_dir.resolve() or any(p.resolve().parent == out or out in p.resolve().parents for _, p in inputs):
        raise DataError(f"--output {output_dir} is the input folder or holds an input: masks would replace the "
                        f"images they come from; choose another folder")
    if output_dir.name in TRUTH_FOLDERS and (output_dir.parent / "images").is_dir():
        raise DataError(f"--output {output_dir} is a dataset's ground-truth folder (beside {output_dir.parent / 'images'}): "
                        f"predictions there would replace and pass for its annotations; choose another folder")
    by_stem: dict[str, Path] = {}
    for stem, path in inputs:
        if stem in by_stem:
            raise DataError(f"inputs {by_stem[stem].name} and {path.name} would both write {stem}{suffixes[0]}; "
                            f"rename one of them")
        by_stem[stem] = path
    existing = [output_dir / f"{stem}{suffix}" for stem in by_stem for suffix in suffixes
                if (output_dir / f"{stem}{suffix}").exists()]
    if existing and not overwrite:
        raise DataError(f"--output {output_dir} already holds {len(existing)} of the files this would write "
                        f"({', '.join(p.name for p in existing[:3])}{' ...' if len(existing) > 3 else ''}); "
                        f"choose an empty folder, or pass --overwrite to replace them")


@torch.no_grad()
def predict_folder(run_dir, input_dir, output_dir, probabilities: bool = False, device: str = "auto",
                   log=print, overwrite: bool = False, threshold: float | None = None) -> list[Path]:
    """Masks of every image (or volume) in ``input_dir``, at the kept threshold or ``threshold``."""
    input_dir, output_dir = Path(input_dir).expanduser().resolve(), Path(output_dir).expanduser().resolve()
    if not input_dir.is_dir():
        raise DataError(f"input folder not found: {input_dir}")
    if threshold is not None and not 0 <= threshold < 1:
        raise DataError(f"--threshold {threshold}: a foreground probability in [0, 1)")
    rt = local(device)
    kept = load_kept(run_dir, rt.device)
    if threshold is not None:
        log(f"threshold {threshold:g} (the run kept {kept.threshold:g})")
        kept = dataclasses.replace(kept, threshold=threshold)
    if kept.dims == 3:
        return predict_volumes(kept, rt, input_dir, output_dir, probabilities, log, overwrite)
    files = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTS)}) in input folder {input_dir}")
    # a run on an nnU-Net dataset predicts cases: CASE_0000.png (+ _0001...) -> CASE.png, as nnU-Net does
    cases = (nnunet.input_cases(input_dir, files) if kept.cfg.data.dataset == "nnunet"
             else [(p.stem, [p]) for p in files])
    check_outputs([(stem, paths[0]) for stem, paths in cases], input_dir, output_dir,
                  (".png", "_prob.png") if probabilities else (".png",), overwrite)
    for path in files:  # every header before any mask: a bad file is named before work starts
        check_header(path)
    size, scale = kept.cfg.data.size, kept.cfg.data.scale
    gen = torch.Generator().manual_seed(kept.cfg.seed)  # CPU: diffusion._on
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (stem, paths) in enumerate(cases):
        path = paths[0]
        image = read_image(path, kept.channels) if len(paths) == 1 else nnunet.read_channels(paths, kept.channels)
        h, w = image.shape[:2]
        # resized exactly as the cache resized the training and test images
        small = resize(image, network_shape((h, w), size, scale), False)
        x = torch.from_numpy(small.astype(np.float32)).permute(2, 0, 1)[None] / 255.0
        x = normalise(x, kept.mean, kept.std).to(rt.device)
        with rt.autocast():
            probs = (slide(lambda t: kept.scores(t, gen).float().softmax(1), x, (size, size), kept.cfg.eval.overlap)
                     if scale > 0 else kept.scores(x, gen).float().softmax(1))
        prob = upsample(probs[0, 1].float().cpu().numpy(), (h, w))
        out = output_dir / f"{stem}.png"
        Image.fromarray(((prob > kept.threshold) * 255).astype(np.uint8)).save(out)
        written.append(out)
        if probabilities:
            prob_path = output_dir / f"{stem}_prob.png"
            Image.fromarray((prob * 255).round().astype(np.uint8)).save(prob_path)
            written.append(prob_path)
        log(f"[{i + 1}/{len(cases)}] {path.name} ({w}x{h}) -> {out}")
    return written


VOLUME_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".h5")


def volume_files(input_dir: Path) -> list[tuple[str, Path]]:
    """(name, file) of every volume in a folder: files with a volume extension, and LA's case
    folders (``<CASE>/mri_norm2.h5`` or ``<CASE>/lgemri.nrrd``), named by the folder."""
    found = []
    for p in sorted(input_dir.iterdir()):
        if p.name.startswith("."):
            continue
        ext = next((e for e in VOLUME_EXTS if p.name.lower().endswith(e)), None)
        if p.is_file() and ext:
            found.append((p.name[: -len(ext)], p))
        elif p.is_dir():
            inner = next((p / n for n in ("mri_norm2.h5", "lgemri.nrrd") if (p / n).is_file()), None)
            if inner is not None:
                found.append((p.name, inner))
    return found


def read_input_volume(path: Path, default_spacing) -> tuple[np.ndarray, tuple[float, ...]]:
    """A volume to predict, z-scored as training volumes are, with its spacing (its own, or for
    HDF5, which carries none, the run's data.spacing or the dataset's default)."""
    from .data.la import read_volume

    if path.suffix.lower() == ".h5":
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                image = np.asarray(fh["image"], dtype=np.float32)
        except (OSError, KeyError) as exc:
            raise DataError(f"cannot read volume {path} (an HDF5 file with an 'image' dataset): {exc}") from None
        spacing = tuple(default_spacing)
    else:
        image, spacing = read_volume(path)
    if image.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {image.shape}")
    image = image.astype(np.float32)
    return (image - image.mean()) / max(float(image.std()), 1e-8), spacing


def write_nifti(array: np.ndarray, spacing, path: Path) -> None:
    """An (x, y, z) array as NIfTI with the voxel size ``spacing`` (mm) on its diagonal affine."""
    import nibabel as nib

    affine = np.diag([*(float(s) for s in spacing), 1.0])
    img = nib.Nifti1Image(array, affine)
    img.header.set_zooms(tuple(float(s) for s in spacing))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def predict_volumes(kept, rt, input_dir: Path, output_dir: Path, probabilities: bool, log,
                    overwrite: bool = False) -> list[Path]:
    from .data.la import LA_SPACING

    files = volume_files(input_dir)
    if not files:
        raise DataError(f"no volumes ({', '.join(VOLUME_EXTS)}, or LA case folders) in input folder {input_dir}")
    if kept.cfg.data.dataset == "nnunet3d":  # imagesTs/CASE_0000.nii.gz -> CASE.nii.gz, as nnU-Net names them
        files = [(name.rpartition("_")[0] if nnunet.is_channel_file(path) else name, path) for name, path in files]
    check_outputs(files, input_dir, output_dir, (".nii.gz", "_prob.nii.gz") if probabilities else (".nii.gz",),
                  overwrite)
    default_spacing = tuple(kept.cfg.data.spacing) or LA_SPACING
    volumes = [(name, path, *read_input_volume(path, default_spacing)) for name, path in files]  # all checked first
    gen = torch.Generator().manual_seed(kept.cfg.seed)  # CPU: diffusion._on
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (name, path, image, spacing) in enumerate(volumes):
        x = torch.from_numpy(image)[None, None].to(rt.device)
        with rt.autocast():
            probs = slide(lambda t: kept.scores(t, gen).float().softmax(1), x, tuple(kept.cfg.data.patch),
                          kept.cfg.eval.overlap, 2)
        prob = probs[0, 1].float().cpu().numpy()
        out = output_dir / f"{name}.nii.gz"
        write_nifti((prob > kept.threshold).astype(np.uint8), spacing, out)
        written.append(out)
        if probabilities:
            prob_path = output_dir / f"{name}_prob.nii.gz"
            write_nifti(prob.astype(np.float32), spacing, prob_path)
            written.append(prob_path)
        log(f"[{i + 1}/{len(volumes)}] {path} {'x'.join(map(str, image.shape))} "
            f"({'x'.join(f'{s:g}' for s in spacing)} mm) -> {out}")
    return written
