"""gs:// on the inference side, against the local GCS emulator (tests/gcs_emulator.py):
super_resolve with its export, input images and outputs on gs://, convert reading and writing
gs://, weight files (VGG19, state_dicts, Keras .h5) and images read from gs://, and a gs://
compilation cache. Every result must equal, bit for bit, the same call on local paths."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import convert, paths, super_resolve
from lfcsr_jax.inference.compile_cache import configure_compilation_cache
from lfcsr_jax.input import image_io
from lfcsr_jax.weights import exports, state_dicts, vgg_weights
from tests.conftest import make_tiny_export

# Compile time dominates these tiny forwards on a busy CPU (conftest.py).
pytestmark = pytest.mark.usefixtures("fast_compiles")


def _png16_rgb(x_HxWx3: np.ndarray) -> bytes:
    """A 16-bit RGB PNG, encoded by hand (PIL cannot write one; this is the TensorFlow path)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = x_HxWx3.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in x_HxWx3)
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def _write_inputs(folder: Path) -> None:
    """Every decoder path of image_io: 8-bit RGB, gray, 16-bit gray (PIL), 16-bit RGB (TF)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (20, 18), dtype=np.uint8)).save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 65536, (18, 22), dtype=np.uint16)).save(folder / "g16.png")
    (folder / "c16.png").write_bytes(_png16_rgb(rng.integers(0, 65536, (22, 20, 3))))
    (folder / "notes.txt").write_text("not an image: skipped by suffix")


def _upload(folder: Path, remote: str) -> None:
    """Every file below `folder` to the same relative names below `remote`."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            name = path.relative_to(folder).as_posix()
            paths.location(f"{remote}/{name}").write_bytes(path.read_bytes())


def _tiny_export_on_gcs(tmp_path: Path, gcs_root: str) -> Path:
    """The tiny export, local and a copy on gs:// (config.json, the completion marker, last).

    Copied rather than saved there: save_export to gs:// is tests/gcs_test.py's subject; this
    file tests reading an export from gs://, and the copy is byte-identical to the local one."""
    export = Path(make_tiny_export(tmp_path / "export"))
    _upload(export / "params", f"{gcs_root}/export/params")
    _upload_file(export / "config.json", f"{gcs_root}/export/config.json")
    return export


def _upload_file(path: Path, remote: str) -> None:
    paths.location(remote).write_bytes(path.read_bytes())


def test_super_resolve_on_gcs_equals_local(tmp_path, gcs_root):
    export = _tiny_export_on_gcs(tmp_path, gcs_root)
    _write_inputs(tmp_path / "in")
    _upload(tmp_path / "in", f"{gcs_root}/in")
    names = ["c16_x4.png", "g16_x4.png", "gray_x4.png", "rgb_x4.png"]

    local = super_resolve.main([str(tmp_path / "in"), f"--checkpoint={export}",
                                f"--output={tmp_path / 'out'}"])
    remote = super_resolve.main([f"{gcs_root}/in", f"--checkpoint={gcs_root}/export",
                                 f"--output={gcs_root}/out"])
    assert sorted(p.name for p in local) == sorted(p.name for p in remote) == names
    assert all(str(p).startswith(f"{gcs_root}/out/") for p in remote)
    listed = sorted(p.name for p in paths.location(f"{gcs_root}/out").iterdir())
    assert listed == names  # one object per output, no temporaries
    for name in names:  # same pixels, same PNG encoder: the same bytes
        assert (paths.location(f"{gcs_root}/out/{name}").read_bytes()
                == (tmp_path / "out" / name).read_bytes()), name

    # One gs:// file to one gs:// .npy (float32, unquantised), and mixed: gs:// in, local out.
    super_resolve.main([f"{gcs_root}/in/c16.png", f"--checkpoint={gcs_root}/export",
                        f"--output={gcs_root}/one.npy", "--format=npy", "--alpha=0.5"])
    super_resolve.main([f"{gcs_root}/in/c16.png", f"--checkpoint={gcs_root}/export",
                        f"--output={tmp_path / 'one.npy'}", "--format=npy", "--alpha=0.5"])
    with paths.location(f"{gcs_root}/one.npy").open("rb") as handle:
        np.testing.assert_array_equal(np.load(handle), np.load(tmp_path / "one.npy"))


def test_super_resolve_refusals_on_gcs(tmp_path, gcs_root):
    _tiny_export_on_gcs(tmp_path, gcs_root)
    _write_inputs(tmp_path / "in")
    _upload(tmp_path / "in", f"{gcs_root}/in")
    checkpoint = f"--checkpoint={gcs_root}/export"
    with pytest.raises(SystemExit, match="would overwrite the input"):
        super_resolve.main([f"{gcs_root}/in/rgb.png", checkpoint, f"--output={gcs_root}/in/rgb.png"])
    with pytest.raises(SystemExit, match="missing.png: no such file or folder"):
        super_resolve.main([f"{gcs_root}/in/missing.png", checkpoint, f"--output={gcs_root}/o"])
    with pytest.raises(SystemExit, match="exists and is not a folder"):
        super_resolve.main([f"{gcs_root}/in", checkpoint, f"--output={gcs_root}/in/notes.txt"])
    with pytest.raises(SystemExit, match="does not exist"):
        super_resolve.main([f"{gcs_root}/in", f"--checkpoint={gcs_root}/nope", f"--output={gcs_root}/o"])
    assert image_io.read_image(f"{gcs_root}/in/rgb.png").shape == (24, 28, 3)  # untouched
    assert not paths.location(f"{gcs_root}/o").exists()


def test_images_on_gcs(tmp_path, gcs_root):
    _write_inputs(tmp_path / "in")
    _upload(tmp_path / "in", f"{gcs_root}/in")
    listed = image_io.list_images(f"{gcs_root}/in")
    assert [str(p) for p in listed] == [f"{gcs_root}/in/{n}"
                                        for n in ("c16.png", "g16.png", "gray.png", "rgb.png")]
    for path in listed:
        np.testing.assert_array_equal(image_io.read_image(path),
                                      image_io.read_image(tmp_path / "in" / path.name))
    rgb = image_io.read_image(tmp_path / "in" / "rgb.png")
    image_io.write_png(f"{gcs_root}/written/x.png", rgb)
    np.testing.assert_array_equal(image_io.read_image(f"{gcs_root}/written/x.png"), rgb)
    with pytest.raises(image_io.ImageReadError, match="notes.txt: not an image"):
        image_io.read_image(f"{gcs_root}/in/notes.txt")
    with pytest.raises(image_io.ImageReadError, match="gone.png: no such file"):
        image_io.read_image(f"{gcs_root}/in/gone.png")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_io.list_images(f"{gcs_root}/nothing")


def test_convert_pdasr_from_gcs(tmp_path, gcs_root):
    """--input on gs://. (A gs:// --output is save_export's, covered in tests/gcs_test.py; the
    VGG19 test below writes convert's output to gs://.)"""
    pytest.importorskip("torch")
    from configs import x4  # pylint: disable=import-outside-toplevel
    from tests.torch_pdasr import tiny_state_dict  # pylint: disable=import-outside-toplevel

    state_dict = tiny_state_dict()
    np.savez(tmp_path / "model.npz", **state_dict)
    _upload_file(tmp_path / "model.npz", f"{gcs_root}/model.npz")
    args = ["pdasr", "--input", f"{gcs_root}/model.npz", "--output", str(tmp_path / "export"),
            "--config", f"{convert.DEFAULT_CONFIG}:tiny"]
    assert convert.main(args) == 0
    model_cfg, params = exports.load_export(tmp_path / "export")
    assert model_cfg["han_features"] == 8
    want = convert.pdasr_params_from_state_dict(state_dict, x4.get_config("tiny").model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)
    info = json.loads((tmp_path / "export" / "config.json").read_text())
    assert info["converted_from"] == f"{gcs_root}/model.npz"  # a URI is not made absolute
    with pytest.raises(SystemExit, match="is the input file"):
        convert.main(["pdasr", "--input", f"{gcs_root}/model.npz", "--output",
                      f"{gcs_root}/model.npz/"])
    with pytest.raises(SystemExit, match="already exists"):
        convert.main(["pdasr", "--input", str(tmp_path / "model.npz"), "--output",
                      f"{gcs_root}/model.npz"])


def test_vgg19_weights_converted_to_and_read_from_gcs(tmp_path, gcs_root):
    rng = np.random.default_rng(0)
    state_dict = {}
    for name, index in vgg_weights.TORCHVISION_CONV_INDEX.items():
        c_in, c_out = vgg_weights.VGG19_CONV_SHAPES[name]
        state_dict[f"features.{index}.weight"] = rng.standard_normal(
            (c_out, c_in, 3, 3), dtype=np.float32)
        state_dict[f"features.{index}.bias"] = rng.standard_normal(c_out, dtype=np.float32)
    np.savez(tmp_path / "torchvision.npz", **state_dict)
    target = f"{gcs_root}/weights/vgg19.npz"
    convert.main(["vgg19", "--input", str(tmp_path / "torchvision.npz"), "--output", target])
    assert vgg_weights.read_vgg19_input_convention(target) == "torchvision"
    remote, local = (vgg_weights.load_vgg19_weights(p)
                     for p in (target, tmp_path / "torchvision.npz"))
    assert remote.input_convention == local.input_convention == "torchvision"
    jax.tree_util.tree_map(np.testing.assert_array_equal, remote.params, local.params)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        vgg_weights.load_vgg19_weights(f"{gcs_root}/weights/absent.npz")


def test_state_dicts_and_keras_files_read_from_gcs(tmp_path, gcs_root):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    from tests.conftest import write_keras_legacy_h5  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(1)
    arrays = {"a.weight": rng.standard_normal((4, 3, 3, 3), dtype=np.float32),
              "a.bias": rng.standard_normal(4, dtype=np.float32)}
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in arrays.items()}},
               tmp_path / "w.pth")
    np.savez(tmp_path / "w.npz", **arrays)
    save_file(arrays, str(tmp_path / "w.safetensors"))
    # Keras' legacy layout with small kernels: the reader checks names here, shapes later.
    layers = {vgg_weights._keras_layer_name(n): (rng.standard_normal((3, 3, 2, 2)),  # pylint: disable=protected-access
                                                 rng.standard_normal(2))
              for n in vgg_weights.VGG19_CONV_NAMES}
    write_keras_legacy_h5(tmp_path / "k.h5", layers)
    _upload(tmp_path, gcs_root)
    for name in ("w.pth", "w.npz", "w.safetensors"):
        remote = state_dicts.load_state_dict(f"{gcs_root}/{name}")
        local = state_dicts.load_state_dict(tmp_path / name)
        assert sorted(remote) == sorted(local) == sorted(arrays), name
        for key in arrays:
            np.testing.assert_array_equal(remote[key], local[key])
    read = vgg_weights._keras_arrays_from_file  # pylint: disable=protected-access
    remote_k, local_k = read(f"{gcs_root}/k.h5"), read(tmp_path / "k.h5")
    jax.tree_util.tree_map(np.testing.assert_array_equal, remote_k, local_k)
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        state_dicts.load_state_dict(f"{gcs_root}/gone.pth")


def test_compilation_cache_on_gcs(gcs_root):
    """JAX opens a non-local cache folder through etils.epath (gcsfs here): programs land there."""
    from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel

    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    before = {k: jax.config.values[k] for k in keys}
    try:
        folder = configure_compilation_cache(f"{gcs_root}/xla/")
        assert str(folder) == f"{gcs_root}/xla"
        jax.jit(lambda x: x * 3.25 + 0.5)(np.arange(7.0)).block_until_ready()
        assert list(paths.location(f"{gcs_root}/xla").iterdir())
    finally:
        for key, value in before.items():
            jax.config.update(key, value)
        compilation_cache.reset_cache()
