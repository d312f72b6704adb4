"""Reading images robustly: every file becomes RGB uint8 HxWx3 or raises an error naming it.

Conversions follow what MATLAB/OpenCV users of the SR field expect: grayscale is replicated to three
channels, alpha is dropped (not composited), palettes are expanded, and 16-bit samples become 8-bit
with MATLAB's `im2uint8` rounding, round(v / 257).
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from lfcsr_jax.cli_errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageReadError(UserError):
    """A file that cannot be used as an image; the message names the file and the reason."""


def _uint16_to_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB im2uint8 of uint16 data: round(v / 257), exact in integers."""
    return ((2 * x.astype(np.uint32) + 257) // 514).astype(np.uint8)


def _png_bit_depth(path: Path) -> int | None:
    """Bit depth from a PNG's IHDR chunk (PIL silently truncates 16-bit RGB to its high byte)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE):
        return None
    return head[24]


def _read_png16(path: Path) -> np.ndarray:
    """Full-precision decode of a 16-bit PNG through TensorFlow (imported only for this case)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.set_visible_devices([], "GPU")
    x = tf.io.decode_png(tf.io.read_file(str(path)), channels=0, dtype=tf.uint16).numpy()
    return _to_rgb_channels(_uint16_to_uint8(x))


def _to_rgb_channels(x_HxWxC: np.ndarray) -> np.ndarray:
    """1 (gray), 2 (gray + alpha), 3 or 4 (RGBA) channels -> 3 channels."""
    channels = x_HxWxC.shape[2]
    if channels in (1, 2):
        return np.repeat(x_HxWxC[:, :, :1], 3, axis=2)
    return x_HxWxC[:, :, :3]


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        x = np.asarray(img)
        if x.min() < 0 or x.max() > 65535:
            raise ValueError(f"integer samples outside 0..65535 (mode {mode})")
        return np.repeat(_uint16_to_uint8(x)[:, :, None], 3, axis=2)
    if mode == "F":
        raise ValueError("floating-point images are not supported; save it as 8/16-bit PNG")
    if mode != "RGB":
        # L, LA, 1, P (with or without transparency), RGBA, CMYK, YCbCr: PIL's own conversions.
        img = img.convert("RGBA" if "transparency" in img.info else "RGB").convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as RGB uint8 (H, W, 3); ImageReadError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        if _png_bit_depth(path) == 16:
            x = _read_png16(path)
        else:
            with Image.open(path) as img:
                img.load()  # decodes everything now, so truncation fails here, not later.
                x = _pil_to_rgb(img)
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not an image file PIL can read") from e
    except ImageReadError:
        raise
    except Exception as e:  # truncated/corrupt data: PIL raises OSError, SyntaxError, ...
        raise ImageReadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if x.ndim != 3 or x.shape[2] != 3 or min(x.shape[:2]) < 1:
        raise ImageReadError(f"{path}: decoded to unexpected shape {x.shape}")
    return np.ascontiguousarray(x)


def read_images(paths: Sequence[str | os.PathLike], num_threads: int = 4) -> list[np.ndarray]:
    """Decodes all files up front (threads: PIL releases the GIL while inflating)."""
    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        return list(pool.map(read_image, paths))


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files in `directory` (by suffix, sorted); a clear error if missing or empty."""
    directory = Path(directory)
    if not str(directory) or not directory.is_dir():
        raise FileNotFoundError(
            f"image folder {str(directory)!r} does not exist or is not a folder")
    files = sorted(p for p in directory.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(
            f"image folder {directory} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def write_png(path: str | os.PathLike, image_HxWx3: np.ndarray) -> None:
    """Saves an RGB uint8 image as PNG, creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(image_HxWx3, dtype=np.uint8)).save(path)
