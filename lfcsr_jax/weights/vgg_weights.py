"""Pretrained weights for the frozen VGG19: import, save, load.

VGG19 params are {'conv1_1': {'kernel': HWIO float32, 'bias': float32}, ..., 'conv5_4': ...}
(the tree `lfcsr_jax.models.vgg19.VGG19Features` uses). Where they come from decides the input
they expect (see `lfcsr_jax.models.vgg19.vgg_input`):
  torchvision `vgg19-dcbb9e9d.pth`           -> 'torchvision' (x/255, ImageNet mean/std, RGB)
  Keras `VGG19(weights='imagenet')` .h5 file -> 'caffe' (0-255 minus the Caffe mean; the Keras
      model reads BGR, our converter reorders the first conv's input channels so we feed RGB)
Our .npz format stores that convention beside the params ('meta/input_convention'), and
`load_vgg19_weights` returns both together as a `VGG19Weights`, so the loss normalises its input
as the file's weights require.

Nothing here downloads: every loader takes a path, local or gs:// (read through
`lfcsr_jax.paths`; a gs:// Keras file is read into memory, as h5py opens only local files by
name). PyTorch-format files are read by `lfcsr_jax.weights.state_dicts`; h5py is imported only to read
Keras files.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
from typing import Any, Mapping

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.models.vgg19 import INPUT_CONVENTIONS, VGG19_BLOCKS, VGG19_CONV_NAMES, VGG19Weights
from lfcsr_jax.weights.state_dicts import check_keys, load_state_dict, oihw_to_hwio

Params = dict[str, dict[str, np.ndarray]]
PathLike = str | os.PathLike

_CONVENTION_KEY = "meta/input_convention"


def _torchvision_conv_indices() -> dict[str, int]:
    """conv name -> index in torchvision's vgg19().features (a conv and a ReLU each, a pool per block)."""
    indices, position = {}, 0
    for block, (_, n_convs) in enumerate(VGG19_BLOCKS, 1):
        for i in range(1, n_convs + 1):
            indices[f"conv{block}_{i}"] = position
            position += 2
        position += 1
    return indices


TORCHVISION_CONV_INDEX = _torchvision_conv_indices()  # conv1_1 -> 0, ..., conv3_4 -> 16, conv5_4 -> 34


def _vgg19_shapes() -> dict[str, tuple[int, int]]:
    """conv name -> (in channels, out channels)."""
    shapes, channels_in = {}, 3
    for block, (channels, n_convs) in enumerate(VGG19_BLOCKS, 1):
        for i in range(1, n_convs + 1):
            shapes[f"conv{block}_{i}"] = (channels_in, channels)
            channels_in = channels
    return shapes


VGG19_CONV_SHAPES = _vgg19_shapes()


# ---------------------------------------------------------------------------------------------
# VGG19 from torchvision


def vgg19_params_from_torchvision(state_dict: Mapping[str, Any],
                                  where: str = "torchvision VGG19 state_dict") -> Params:
    """torchvision vgg19 state_dict (features.N.weight OIHW / features.N.bias) -> our params.

    'classifier.*' keys (the fully connected head of a full vgg19()) are ignored on purpose: the
    loss uses the conv features only. Missing or mis-shaped feature keys and any other key raise
    ValueError naming them. The result expects the 'torchvision' input convention.
    """
    expected = {}
    for name, index in TORCHVISION_CONV_INDEX.items():
        c_in, c_out = VGG19_CONV_SHAPES[name]
        expected[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
        expected[f"features.{index}.bias"] = (c_out,)
    arrays = check_keys(where, state_dict, expected, re.compile(r"classifier\..*"))
    return {name: {"kernel": oihw_to_hwio(arrays[f"features.{index}.weight"]),
                   "bias": arrays[f"features.{index}.bias"]}
            for name, index in TORCHVISION_CONV_INDEX.items()}


# ---------------------------------------------------------------------------------------------
# VGG19 from Keras


def _keras_layer_name(conv_name: str) -> str:
    block, i = conv_name[len("conv"):].split("_")
    return f"block{block}_conv{i}"


def _kernel_and_bias(where: str, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    kernels = [a for a in arrays if a.ndim == 4]
    biases = [a for a in arrays if a.ndim == 1]
    if len(kernels) != 1 or len(biases) != 1 or len(arrays) != 2:
        raise ValueError(f"{where}: expected one 4-D kernel and one bias, got shapes "
                         f"{[a.shape for a in arrays]}")
    return kernels[0], biases[0]


def _keras_arrays_from_model(model: Any) -> dict[str, list[np.ndarray]]:
    arrays = {}
    for name in VGG19_CONV_NAMES:
        try:
            layer = model.get_layer(_keras_layer_name(name))
        except ValueError as error:
            raise ValueError(f"Keras model: no layer {_keras_layer_name(name)!r}") from error
        arrays[name] = [np.asarray(w) for w in layer.get_weights()]
    return arrays


def _keras_arrays_from_file(path: PathLike) -> dict[str, list[np.ndarray]]:
    """Reads a Keras 2 / legacy .h5 (layer groups by name, full model or weights only), a
    Keras 3 .weights.h5 (layers/conv2d, conv2d_1, ... in model order) or a Keras 3 .keras
    archive (a zip holding model.weights.h5), without importing Keras."""
    import h5py  # pylint: disable=import-outside-toplevel

    where = os.fspath(path)
    try:
        # h5py and zipfile take a local name or a file object: a gs:// file comes as bytes.
        source: Any = (io.BytesIO(paths.location(path).read_bytes()) if paths.is_remote(path)
                       else where)
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as archive:
                source = io.BytesIO(archive.read("model.weights.h5"))
        elif isinstance(source, io.BytesIO):
            source.seek(0)  # is_zipfile read from it
        f = h5py.File(source, "r")
    except (OSError, KeyError) as error:
        raise ValueError(f"{where}: not a readable Keras weights file ({error})") from error
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            return _keras_arrays_legacy(where, root)
        if "layers" in root:
            return _keras_arrays_v3(where, root["layers"])
        raise ValueError(f"{where}: neither a Keras legacy weights file ('layer_names' attribute) "
                         "nor a Keras 3 .weights.h5 ('layers' group)")


def _decode(name: Any) -> str:
    return name.decode("utf8") if isinstance(name, bytes) else str(name)


def _keras_arrays_legacy(where: str, root: Any) -> dict[str, list[np.ndarray]]:
    layer_names = [_decode(n) for n in root.attrs["layer_names"]]
    arrays = {}
    for name in VGG19_CONV_NAMES:
        layer = _keras_layer_name(name)
        if layer not in layer_names:
            raise ValueError(f"{where}: missing Keras layer {layer!r} (has {layer_names})")
        group = root[layer]
        arrays[name] = [np.asarray(group[_decode(w)]) for w in group.attrs["weight_names"]]
    return arrays


def _keras_arrays_v3(where: str, layers: Any) -> dict[str, list[np.ndarray]]:
    # Keras 3 names layers by class in model order: conv2d, conv2d_1, ..., conv2d_15.
    convs = sorted((n for n in layers if re.fullmatch(r"conv2d(_\d+)?", n)),
                   key=lambda n: int(n.split("_")[1]) if "_" in n else 0)
    if len(convs) != len(VGG19_CONV_NAMES):
        raise ValueError(f"{where}: expected {len(VGG19_CONV_NAMES)} conv2d layers, found {convs}")
    arrays = {}
    for name, group_name in zip(VGG19_CONV_NAMES, convs):
        variables = layers[group_name]["vars"]
        arrays[name] = [np.asarray(variables[k]) for k in sorted(variables, key=int)]
    return arrays


def vgg19_params_from_keras(path_or_model: PathLike | Any) -> Params:
    """keras.applications.VGG19(include_top=False) weights -> params.

    `path_or_model`: a Keras model, or a .h5 / .weights.h5 / .keras file (local or gs://).

    Keras kernels are already HWIO. The Keras/Caffe weights read BGR input; we reverse the first
    conv's input-channel axis so the params take RGB. The result expects the 'caffe' input
    convention: RGB in 0-255 minus CAFFE_MEAN_RGB, no std division (`vgg_input(x, 'caffe')`).
    """
    if isinstance(path_or_model, (str, os.PathLike)):
        where = os.fspath(path_or_model)
        raw = _keras_arrays_from_file(path_or_model)
    else:
        where = "Keras model"
        raw = _keras_arrays_from_model(path_or_model)
    params = {}
    for name in VGG19_CONV_NAMES:
        kernel, bias = _kernel_and_bias(f"{where} {_keras_layer_name(name)}", raw[name])
        c_in, c_out = VGG19_CONV_SHAPES[name]
        if kernel.shape != (3, 3, c_in, c_out) or bias.shape != (c_out,):
            raise ValueError(f"{where} {_keras_layer_name(name)}: expected kernel (3, 3, {c_in}, "
                             f"{c_out}) and bias ({c_out},), got {kernel.shape} and {bias.shape}")
        params[name] = {"kernel": kernel.astype(np.float32), "bias": bias.astype(np.float32)}
    # BGR -> RGB: the first conv's input channels in reverse order.
    params["conv1_1"]["kernel"] = np.ascontiguousarray(params["conv1_1"]["kernel"][:, :, ::-1, :])
    return params


# ---------------------------------------------------------------------------------------------
# Files


def save_vgg19_params(path: PathLike, params: Params, input_convention: str) -> None:
    """Writes params as an .npz with flat keys 'conv1_1/kernel', ... and the input convention.

    input_convention: 'torchvision' for params from `vgg19_params_from_torchvision`, 'caffe'
    for params from `vgg19_params_from_keras`.
    """
    if input_convention not in INPUT_CONVENTIONS:
        raise ValueError(f"input_convention {input_convention!r} not in {INPUT_CONVENTIONS}")
    flat = {f"{name}/{leaf}": np.asarray(params[name][leaf], np.float32)
            for name in VGG19_CONV_NAMES for leaf in ("kernel", "bias")}
    flat[_CONVENTION_KEY] = np.asarray(input_convention)
    buffer = io.BytesIO()  # a file object keeps np.savez from appending '.npz'
    np.savez(buffer, **flat)
    # Whole or not at all, local or gs://: a failed write leaves no truncated weights file.
    paths.write_bytes_atomic(path, buffer.getvalue())


def _checked_convention(where: str, flat: Mapping[str, Any]) -> str:
    if _CONVENTION_KEY not in flat:
        raise ValueError(f"{where}: missing key {_CONVENTION_KEY!r} (not written by save_vgg19_params)")
    convention = str(flat[_CONVENTION_KEY])
    if convention not in INPUT_CONVENTIONS:
        raise ValueError(f"{where}: {_CONVENTION_KEY}={convention!r} not in {INPUT_CONVENTIONS}")
    return convention


def _vgg19_params_from_npz(where: str, flat: Mapping[str, np.ndarray]) -> VGG19Weights:
    expected = {}
    for name in VGG19_CONV_NAMES:
        c_in, c_out = VGG19_CONV_SHAPES[name]
        expected[f"{name}/kernel"] = (3, 3, c_in, c_out)
        expected[f"{name}/bias"] = (c_out,)
    convention = _checked_convention(where, flat)
    arrays = check_keys(where, flat, expected, re.compile(re.escape(_CONVENTION_KEY)))
    params = {name: {"kernel": arrays[f"{name}/kernel"], "bias": arrays[f"{name}/bias"]}
              for name in VGG19_CONV_NAMES}
    return VGG19Weights(params, convention)


def _existing(path: PathLike) -> str:
    """The path as text (local or gs://) once it names an existing file."""
    where = os.fspath(path)
    if not where or not paths.location(where).is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {where}")
    return where


def _unknown_format(where: str) -> ValueError:
    return ValueError(f"{where}: unknown VGG19 weights format (expected .npz, .pth, .pt, "
                      ".safetensors, .h5 or .keras)")


def read_vgg19_input_convention(path: PathLike) -> str:
    """The input convention of a VGG19 weights file without reading its weights.

    By format: Keras files are 'caffe', PyTorch files and torchvision-keyed .npz 'torchvision';
    our .npz stores it. Used by train.validate_config before any compute.
    """
    where = _existing(path)
    suffix = where.lower()
    if suffix.endswith((".h5", ".keras")):
        return "caffe"
    if suffix.endswith((".pth", ".pt", ".safetensors")):
        return "torchvision"
    if not suffix.endswith(".npz"):
        raise _unknown_format(where)
    try:  # lazy: reads the zip directory and the one entry it needs (ranged reads on gs://)
        with paths.location(where).open("rb") as handle, \
                np.load(handle, allow_pickle=False) as data:
            if any(k.startswith("features.") for k in data.files):
                return "torchvision"
            meta = {k: data[k] for k in data.files if k == _CONVENTION_KEY}
    except (OSError, ValueError) as error:
        raise ValueError(f"{where}: cannot be read as .npz ({error})") from error
    return _checked_convention(where, meta)


def load_vgg19_weights(path: PathLike) -> VGG19Weights:
    """Any supported VGG19 weights file (local or gs://) -> its params with their input convention.

    .npz: ours (from `save_vgg19_params`) or torchvision keys; .pth/.pt: torchvision state_dict;
    .safetensors: torchvision keys; .h5/.keras: Keras VGG19 (convention 'caffe').
    """
    where = _existing(path)
    suffix = where.lower()
    if suffix.endswith((".h5", ".keras")):
        return VGG19Weights(vgg19_params_from_keras(where), "caffe")
    if not suffix.endswith((".pth", ".pt", ".safetensors", ".npz")):
        raise _unknown_format(where)
    flat = load_state_dict(where)
    if suffix.endswith(".npz") and not any(k.startswith("features.") for k in flat):
        return _vgg19_params_from_npz(where, flat)  # ours, with its stored convention
    return VGG19Weights(vgg19_params_from_torchvision(flat, where), "torchvision")
