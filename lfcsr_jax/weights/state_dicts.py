"""PyTorch-style state_dicts (name -> array) from files (local or gs://), and checks of their keys.

The one reader behind every weight import: `convert` (the authors' PDASR model), `vgg_weights`
(torchvision VGG19), `discriminator_weights` and `lpips` (AlexNet and its heads). Formats:
.pt/.pth/.bin/.ckpt (torch.load with weights_only=True; torch is imported only for them), .npz
and .safetensors. Training checkpoints that nest the state_dict under 'state_dict' or 'model' are
unwrapped. Every value comes back as a numpy array (floating tensors as float32).

Local files are read by the libraries from their path, as always (torch may map them); a gs://
file is read through `lfcsr_jax.paths` into memory and handed over as bytes or a file object,
since torch and safetensors only open local files themselves.
"""

from __future__ import annotations

import io
import os
import re
from typing import Any, Mapping

import numpy as np

from lfcsr_jax import paths

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = TORCH_SUFFIXES + (".npz", ".safetensors")


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any float dtype, any device) or array-like -> numpy."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bfloat16/float16 have no (or no exact) numpy twin
        value = value.numpy()
    return np.asarray(value)


def _unwrap(checkpoint: Any, where: str) -> Mapping[str, Any]:
    """A bare state_dict, or one nested under 'state_dict' / 'model' (training checkpoints)."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{where}: expected a state_dict (names -> tensors), got "
                         f"{type(checkpoint).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return checkpoint


def _load_torch(path: paths.Path) -> Mapping[str, Any]:
    where = os.fspath(path)
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ImportError(f"{where}: reading PyTorch files needs torch; convert the file to "
                          ".npz or .safetensors on a machine that has it") from error
    try:
        source = io.BytesIO(path.read_bytes()) if paths.is_remote(path) else where
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types (pickle, zip, RuntimeError)
        # Only the first line of torch's text: the rest advises weights_only=False, which is
        # wrong for a file of unknown origin.
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise ValueError(f"{where}: not a PyTorch state_dict that can be read safely "
                         f"({first or type(error).__name__})") from error


def _load_npz(path: paths.Path) -> dict[str, np.ndarray]:
    where = os.fspath(path)
    try:
        # A seekable file object (local file, or gcsfs' ranged reads): np.load reads the zip
        # directory, then each entry.
        with path.open("rb") as handle, np.load(handle, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: cannot be read as .npz ({error})") from error


def _load_safetensors(path: paths.Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load, load_file  # pylint: disable=import-outside-toplevel

    where = os.fspath(path)
    try:
        if paths.is_remote(path):
            return dict(load(path.read_bytes()))
        return dict(load_file(where))
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"{where}: cannot be read as safetensors ({error})") from error


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: numpy array} from a .pt/.pth/.bin/.ckpt, .npz or .safetensors file (local or gs://).

    FileNotFoundError when absent, ImportError for a PyTorch file without torch, ValueError
    naming the file for an unknown suffix or unreadable content.
    """
    where = os.fspath(path)
    source = paths.location(path)
    if not where or not source.is_file():
        raise FileNotFoundError(f"{where}: no such file")
    suffix = source.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        loaded = _load_torch(source)
    elif suffix == ".npz":
        loaded = _load_npz(source)
    elif suffix == ".safetensors":
        loaded = _load_safetensors(source)
    else:
        raise ValueError(f"{where}: unknown weight format {suffix!r}; expected one of {SUFFIXES}")
    return {str(k): to_numpy(v) for k, v in _unwrap(loaded, where).items()}


def check_keys(where: str, state_dict: Mapping[str, Any], expected: Mapping[str, tuple],
               ignored: re.Pattern) -> dict[str, np.ndarray]:
    """{key: float32 array} for every key of `expected` (key -> shape).

    One ValueError names all missing, mis-shaped and unknown keys (keys matching `ignored` are
    allowed and dropped).
    """
    missing = [k for k in expected if k not in state_dict]
    unknown = [k for k in state_dict if k not in expected and not ignored.fullmatch(k)]
    arrays = {k: to_numpy(state_dict[k]) for k in expected if k in state_dict}
    misshaped = [f"{k}: expected {tuple(shape)}, got {arrays[k].shape}"
                 for k, shape in expected.items() if k in arrays and arrays[k].shape != tuple(shape)]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if misshaped:
        problems.append(f"mis-shaped keys [{'; '.join(misshaped)}]")
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if problems:
        raise ValueError(f"{where}: " + ", ".join(problems))
    return {k: a.astype(np.float32) for k, a in arrays.items()}


def oihw_to_hwio(w_OxIxHxW: np.ndarray) -> np.ndarray:
    """A PyTorch conv kernel (out, in, h, w) -> the flax layout (h, w, in, out)."""
    return np.ascontiguousarray(np.transpose(w_OxIxHxW, (2, 3, 1, 0)))
