"""How the programs run an export: the compute dtype and the bucketed shapes, and their flags.

* dtype: '' / 'auto' computes in bfloat16 on GPU/TPU and float32 on CPU; 'float32', 'bfloat16',
  'float16' force one. Params are cast to the compute dtype once, at load (model.py).
* Buckets: every image runs padded up to a bucketed shape (`bucket_dim`: a multiple of 32 LR
  pixels, coarser steps for large sides, at most 1/8 extra per side), with a valid-pixel mask
  that the generators use to zero the padding after every layer and to take every mean over the
  valid pixels only (models/generator.py). The cropped output equals the forward of the unpadded
  image to float rounding (tests/inference_test.py measures it), and a folder of many sizes
  compiles a handful of shapes instead of one per size. `bucket=0` runs exact shapes, unmasked.
"""

from __future__ import annotations

from typing import Any

from lfcsr_jax.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")  # generator.compute_dtype accepts these three
DTYPE_CHOICES = ("", "auto") + DTYPES
BUCKET = 32  # LR pixels; the smallest bucket step
class InferenceError(UserError):
    """A bad checkpoint or inference setting; the message names the file or flag."""


def add_flags(parser: Any) -> None:
    """--dtype, --bucket and --xla_cache_dir: how super_resolve and evaluate run the generators."""
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU) | "
                        + " | ".join(DTYPES))
    parser.add_argument("--bucket", type=int, default=BUCKET,
                        help="run images padded (exactly, masked) to bucketed shapes in steps of "
                        "this many LR pixels, so many sizes compile a few shapes (0 = exact "
                        "shapes, one compile per size)")
    parser.add_argument("--xla_cache_dir", default="",
                        help="persistent compilation cache (default: $LFCSR_XLA_CACHE, else "
                        "~/.cache/lfcsr_jax/xla; 'off' disables it)")


def default_dtype(backend: str | None = None) -> str:
    """bfloat16 on accelerators (GPU, TPU), float32 on CPU."""
    if backend is None:
        import jax  # pylint: disable=import-outside-toplevel

        backend = jax.default_backend()
    return "float32" if backend == "cpu" else "bfloat16"


def resolve_dtype(dtype: str) -> str:
    """'' / 'auto' -> default_dtype(); a named dtype as given; anything else is an error."""
    if dtype in ("", "auto"):
        return default_dtype()
    if dtype not in DTYPES:
        raise InferenceError(f"--dtype={dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return dtype


def bucket_dim(n: int, step: int = BUCKET) -> int:
    """`n` rounded up to its bucket: a multiple of max(step, 2^floor(log2 n) / 8), so at most
    1/8 of padding per side and O(8 log n) sizes overall; step <= 0: `n` itself."""
    if step <= 0:
        return n
    coarse = (1 << max(int(n).bit_length() - 1, 0)) // 8
    s = max(step, coarse)
    return -(-n // s) * s


def batch_bucket(n: int) -> int:
    """Batch sizes run as the next power of two (fewer shapes to compile)."""
    return 1 << max(n - 1, 0).bit_length()
