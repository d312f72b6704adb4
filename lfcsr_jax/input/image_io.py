"""Reading images robustly: every file becomes RGB uint8 HxWx3 or raises an error naming it.

Conversions follow what MATLAB/OpenCV users of the SR field expect: grayscale is replicated to three
channels, alpha is dropped (not composited), palettes are expanded, and 16-bit samples become 8-bit
with MATLAB's `im2uint8` rounding, round(v / 257). The EXIF orientation tag (JPEG, PNG eXIf, WebP,
TIFF) is applied as image viewers apply it (what PIL.ImageOps.exif_transpose does), so a phone
photo tagged "rotate 90" is super-resolved and scored upright; outputs are plain arrays written
without an orientation tag.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from lfcsr_jax import paths
from lfcsr_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_ORIENTATION = 0x0112
ORIENTATION_NOTE = ("Images are read upright: an EXIF orientation tag (phone photos) is applied as "
                    "image viewers apply it; outputs are written upright, with no orientation tag.")


class ImageReadError(UserError):
    """A file that cannot be used as an image; the message names the file and the reason."""


def _uint16_to_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB im2uint8 of uint16 data: round(v / 257), exact in integers."""
    return ((2 * x.astype(np.uint32) + 257) // 514).astype(np.uint8)


def _png_bit_depth(data: bytes) -> int | None:
    """Bit depth from a PNG's IHDR chunk (PIL silently truncates 16-bit RGB to its high byte)."""
    if len(data) < 26 or not data.startswith(_PNG_SIGNATURE):
        return None
    return data[24]


def _decode_png16(data: bytes) -> np.ndarray:
    """Full-precision decode of a 16-bit PNG through TensorFlow (imported only for this case).

    TensorFlow gets the bytes, not the path: its own GCS client cannot be pointed at another
    endpoint (emulator, proxy), while the bytes came through the one path type (paths.py)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    tf.config.set_visible_devices([], "GPU")
    x = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
    return _to_rgb_channels(_uint16_to_uint8(x))


def _png_exif_orientation(data: bytes) -> int:
    """The Orientation of a PNG's eXIf chunk (1 if none), read by walking the chunk headers:
    the 16-bit path decodes through TensorFlow, which ignores EXIF."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        kind = data[offset + 4:offset + 8]
        if kind == b"eXIf":
            exif = Image.Exif()
            try:
                exif.load(data[offset + 8:offset + 8 + length])
                return int(exif.get(_EXIF_ORIENTATION, 1))
            except Exception:  # noqa: BLE001 (broken EXIF: viewers show the pixels as stored)
                return 1
        if kind == b"IEND":
            break
        offset += 12 + length  # length, type, data, CRC
    return 1


def _pil_exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 (a broken EXIF block: viewers show the pixels as stored)
        return 1


def _upright(x_HxWxC: np.ndarray, orientation: int) -> np.ndarray:
    """The image as a viewer shows it for EXIF Orientation 1..8 (PIL.ImageOps.exif_transpose's
    table: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse,
    8 rotate 90 counter-clockwise); other values are ignored, as viewers ignore them."""
    if orientation == 2:
        return x_HxWxC[:, ::-1]
    if orientation == 3:
        return x_HxWxC[::-1, ::-1]
    if orientation == 4:
        return x_HxWxC[::-1]
    if orientation == 5:
        return x_HxWxC.transpose(1, 0, 2)
    if orientation == 6:
        return x_HxWxC[::-1].transpose(1, 0, 2)
    if orientation == 7:
        return x_HxWxC[::-1, ::-1].transpose(1, 0, 2)
    if orientation == 8:
        return x_HxWxC[:, ::-1].transpose(1, 0, 2)
    return x_HxWxC


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


def _read_bytes(path: paths.Path) -> bytes:
    """The whole file (local or gs://), one read; ImageReadError naming it if that fails."""
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        return path.read_bytes()
    except Exception as e:  # OSError locally; gcsfs raises its own HTTP errors
        raise ImageReadError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` (local or gs://) as RGB uint8 (H, W, 3), upright (its EXIF
    orientation applied); ImageReadError naming the file otherwise. The file is read once into
    memory and decoded from there."""
    path = paths.location(path)
    data = _read_bytes(path)
    try:
        if _png_bit_depth(data) == 16:
            x = _upright(_decode_png16(data), _png_exif_orientation(data))
        else:
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decodes everything now, so truncation fails here, not later.
                x = _upright(_pil_to_rgb(img), _pil_exif_orientation(img))
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


def list_images(directory: str | os.PathLike) -> list[paths.Path]:
    """Image files in `directory` (by suffix, sorted, not recursive); a clear error if missing
    or empty. The paths are epath paths below the folder as given (a local one is not made
    absolute, so messages show what the user typed)."""
    remote = paths.is_remote(directory)
    shown = paths.location(directory) if remote else paths.Path(directory)
    if not os.fspath(directory) or not paths.location(directory).is_dir():
        raise FileNotFoundError(f"image folder {str(shown)!r} does not exist or is not a folder")
    # iterdir, not glob: recursive globs are not supported on gs://, and the suffix test is
    # case-insensitive anyway.
    names = sorted(p.name for p in paths.location(directory).iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not names:
        raise FileNotFoundError(
            f"image folder {shown} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    return [shown / name for name in names]


def encode_png(image_HxWx3: np.ndarray) -> bytes:
    """An RGB uint8 image as PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image_HxWx3, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: str | os.PathLike, image_HxWx3: np.ndarray) -> None:
    """Saves an RGB uint8 image as PNG (local or gs://), creating a local parent folder; readers
    never see a partial file (paths.write_bytes_atomic)."""
    target = paths.location(path)
    if not paths.is_remote(target):
        target.parent.mkdir(parents=True, exist_ok=True)  # gs:// has no folders to create
    paths.write_bytes_atomic(target, encode_png(image_HxWx3))
