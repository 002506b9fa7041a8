"""Reading 2D image and mask files (PIL): 8-bit images of 1 or 3 channels, binary masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .items import Item

# the most pixels an image or mask may have (its header is read first, before anything is
# decoded): 64 Mi pixels (8192 x 8192), about 200 MB as 8-bit RGB. A 0.2 MB PNG can declare
# 13300 x 13300 pixels and take 3.5 GB once decoded; PIL's own guard stops only past twice its limit
MAX_PIXELS = 64 * 2**20


def check_size(img, path: Path, what: str) -> None:
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise DataError(f"{what} file {path} declares {w}x{h} pixels ({w * h / 2**20:.0f} Mi), more than the "
                        f"{MAX_PIXELS // 2**20} Mi this tool decodes (diffseg.data.images.MAX_PIXELS); shrink it first")


def check_header(path: Path, what: str = "image") -> None:
    """Refuse a file whose header declares more than MAX_PIXELS, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            check_size(img, path, what)
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{what} file {path} is too large to read safely ({exc}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read {what} file {path}: {exc}") from None


def read_image(path: Path, channels: int) -> np.ndarray:
    """(H, W, C) uint8. 16-bit and 32-bit grayscale images are scaled to 8 bits by their type's
    range (PIL's own conversion clips them at 255, which turns most of a 16-bit image white)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:  # lazy: only the header is read here
            check_size(img, path, "image")
            if img.mode.startswith("I") or img.mode == "F":
                wide = np.asarray(img).astype(np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
                if img.mode == "F":
                    top = max(float(wide.max(initial=0)), 1.0)
                arr = np.clip(np.round(wide / top * 255.0), 0, 255).astype(np.uint8)
                arr = np.repeat(arr[..., None], 3, axis=-1) if channels == 3 else arr
            else:
                arr = np.asarray(img.convert("RGB" if channels == 3 else "L"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"image file {path} is too large to read safely ({exc}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image file {path}: {exc}") from None
    return arr if channels == 3 else arr[..., None]


def read_mask(path: Path, instance_labels: bool = False, threshold: int = 0) -> np.ndarray:
    """Binary mask as {0, 1}; non-binary values are an error unless they are instance ids or a
    ``threshold`` (data.mask_threshold, for lossy JPEG masks) says where foreground starts."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            check_size(img, path, "mask")
            arr = np.asarray(img)
    except FileNotFoundError:
        raise DataError(f"mask file not found: {path}") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"mask file {path} is too large to read safely ({exc}); shrink it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read mask file {path}: {exc}") from None
    if arr.ndim == 3:  # RGB(A) masks: all channels must agree
        if not (arr[..., :3] == arr[..., :1]).all():
            raise DataError(f"mask file {path} is a colour image; expected one binary channel")
        arr = arr[..., 0]
    if instance_labels:
        return (arr > 0).astype(np.uint8)
    if threshold > 0:
        return (arr > threshold).astype(np.uint8)
    values = np.unique(arr)
    if set(values.tolist()) <= {0, 1}:
        return arr.astype(np.uint8)
    if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 65535}:  # 8- or 16-bit
        return (arr > 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise DataError(f"mask file {path} is not binary: values {shown} (expected 0/255 or 0/1; for masks "
                    f"saved lossily, e.g. as JPEG, set data.mask_threshold=127 to binarise at a value)")


def read_pair(item: Item, channels: int, instance_labels: bool = False, threshold: int = 0):
    image = read_image(item.image, channels)
    mask = read_mask(item.mask, instance_labels, threshold)
    if image.shape[:2] != mask.shape:
        raise DataError(f"image/mask size mismatch for '{item.name}': {item.image} is "
                        f"{image.shape[1]}x{image.shape[0]} but {item.mask} is {mask.shape[1]}x{mask.shape[0]}")
    fov = None
    if item.fov is not None:
        fov = read_mask(item.fov, threshold=threshold)
        if fov.shape != mask.shape:
            raise DataError(f"field-of-view mask {item.fov} size {fov.shape} does not match {item.mask}")
    return image, mask, fov




GRAY_MODES = ("L", "LA", "I", "I;16", "I;16B", "I;16L", "1", "F")


def folder_channels(paths: list[Path]) -> int:
    """1 when every image is grayscale, else 3 (grayscale images are then read as RGB). Decided
    from every image's header (cheap: no pixels are decoded), never from the first alone."""
    from PIL import Image, UnidentifiedImageError

    gray = True
    for path in paths:
        try:
            with Image.open(path) as img:
                gray = gray and img.mode in GRAY_MODES
        except Image.DecompressionBombError as exc:
            raise DataError(f"image file {path} is too large to read safely ({exc}); shrink it first") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"cannot read image file {path}: {exc}") from None
    return 1 if gray else 3
