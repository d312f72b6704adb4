"""super_resolve: tiling exactness, the alpha ends equal the two stages, files, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import super_resolve
from lfcsr_jax.inference.model import load_model
from lfcsr_jax.models import generator
from tests.conftest import TINY_MODEL, make_tiny_export

LR_SHAPE = (24, 28, 3)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("sr") / "export")


@pytest.fixture(scope="module")
def model(export_dir):
    return load_model(export_dir)


@pytest.fixture(scope="module")
def lr_image():
    return np.random.default_rng(0).integers(0, 256, LR_SHAPE).astype(np.uint8)


def test_tiling_machinery_is_exact_for_a_local_function():
    # A 5x5 box filter (radius 2) followed by x4 nearest upsampling: local, so tiles with
    # overlap/4 >= 2 must reproduce the whole-image result.
    def local_fn(x):
        padded = np.pad(x.astype(np.float64), ((2, 2), (2, 2), (0, 0)), mode="edge")
        box = sum(padded[i:i + x.shape[0], j:j + x.shape[1]] for i in range(5) for j in range(5)) / 25
        return np.kron(box, np.ones((4, 4, 1)))

    x = np.random.default_rng(1).normal(size=(37, 45, 3))
    whole = local_fn(x)
    tiled = super_resolve.tiled_apply(local_fn, x, 4, tile=16, overlap=8)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    # Too small an overlap is visibly different (the test can fail).
    assert np.abs(super_resolve.tiled_apply(local_fn, x, 4, tile=16, overlap=2) - whole).max() > 1e-3


def test_tile_starts_cover_the_image():
    assert super_resolve.tile_starts(10, 16, 4) == [0]
    assert super_resolve.tile_starts(40, 16, 4) == [0, 12, 24]
    with pytest.raises(super_resolve.SuperResolveError):
        super_resolve.tile_starts(40, 8, 8)


def test_tiled_equals_untiled(model, lr_image):
    whole = super_resolve.super_resolve_array(model, lr_image, alpha=0.3)
    # A tile covering the image is the untiled computation.
    same = super_resolve.super_resolve_array(model, lr_image, alpha=0.3, tile=64, overlap=8)
    np.testing.assert_array_equal(same, whole)
    # Exact mode: G_O whole, G_P (local) tiled with overlap >= 4 x its receptive radius.
    overlap = 4 * super_resolve.perceptual_receptive_radius(model.config)
    tiled = super_resolve.super_resolve_array(model, lr_image, alpha=0.3, tile=overlap + 2,
                                              overlap=overlap, tile_mode="perceptual")
    assert np.abs(tiled - whole).max() < 1e-3
    # Both stages tiled: HAN's global attention makes it approximate; on average it must stay
    # close (a misplaced or mis-weighted tile would be off by tens of grey levels).
    approx = super_resolve.super_resolve_array(model, lr_image, alpha=0.3, tile=20, overlap=12)
    assert np.abs(approx - whole).mean() < 0.5


def test_alpha_ends_are_the_two_stages(model, lr_image):
    objective = generator.build_objective(TINY_MODEL)
    perceptual = generator.build_perceptual(TINY_MODEL)
    lr = lr_image.astype(np.float32)[None]
    y_o = objective.apply({"params": model.params["objective"]}, lr)
    y_p = perceptual.apply({"params": model.params["perceptual"]}, y_o)
    # The bucketed (padded, masked) forward equals the exact one to float rounding: up to
    # 1.8e-4 on the 0-255 scale for a random tiny model (docs/design.md section 8).
    np.testing.assert_allclose(super_resolve.super_resolve_array(model, lr_image, 1.0), y_o[0],
                               atol=2e-4)
    np.testing.assert_allclose(super_resolve.super_resolve_array(model, lr_image, 0.0), y_p[0],
                               atol=2e-4)
    assert np.abs(np.asarray(y_o) - np.asarray(y_p)).max() > 1.0  # the two ends really differ


def _write_inputs(folder, lr):
    folder.mkdir()
    Image.fromarray(lr[..., 0]).save(folder / "gray.png")  # 1-channel
    Image.fromarray(np.dstack([lr, np.full(lr.shape[:2], 7, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(lr[..., 1].astype(np.uint16) * 257).save(folder / "deep16.png")  # 16-bit
    return folder


def test_cli_folder_formats(tmp_path, export_dir, lr_image):
    inputs = _write_inputs(tmp_path / "in", lr_image)
    out = tmp_path / "out"
    written = super_resolve.main([str(inputs), f"--checkpoint={export_dir}", f"--output={out}"])
    assert sorted(p.name for p in written) == ["deep16_x4.png", "gray_x4.png", "rgba_x4.png"]
    for path in written:
        assert np.asarray(Image.open(path)).shape == (96, 112, 3)
    npy = super_resolve.main([str(inputs / "rgba.png"), f"--checkpoint={export_dir}",
                              f"--output={tmp_path / 'one.npy'}", "--format=npy", "--alpha=1"])
    sr = np.load(npy[0])
    assert sr.dtype == np.float32 and sr.shape == (96, 112, 3)


def test_bad_inputs(tmp_path, export_dir, lr_image):
    inputs = _write_inputs(tmp_path / "in", lr_image)
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit, match="notes.png"):
        super_resolve.main([str(tmp_path / "notes.png"), f"--checkpoint={export_dir}",
                            f"--output={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="does not exist"):
        super_resolve.main([str(inputs), f"--checkpoint={tmp_path / 'nope'}",
                            f"--output={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="not an lfcsr_jax export"):
        super_resolve.main([str(inputs), f"--checkpoint={inputs}", f"--output={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="overwrite the input"):
        super_resolve.main([str(inputs / "gray.png"), f"--checkpoint={export_dir}",
                            f"--output={inputs / 'gray.png'}"])
    with pytest.raises(SystemExit, match="no such file"):
        super_resolve.main([str(tmp_path / "missing.png"), f"--checkpoint={export_dir}",
                            f"--output={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="alpha"):
        super_resolve.main([str(inputs), f"--checkpoint={export_dir}", f"--output={tmp_path / 'o'}",
                            "--alpha=1.5"])


def test_exif_rotated_input_gives_an_upright_untagged_output(tmp_path, export_dir, lr_image):
    # The camera stored the picture turned (Orientation 6: shown rotated 90 degrees clockwise).
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "in").mkdir()
    Image.fromarray(np.ascontiguousarray(np.rot90(lr_image, k=1))).save(
        tmp_path / "in" / "phone.png", exif=exif.tobytes())
    Image.fromarray(lr_image).save(tmp_path / "in" / "upright.png")
    out = tmp_path / "out"
    super_resolve.main([str(tmp_path / "in"), f"--checkpoint={export_dir}", f"--output={out}"])
    with Image.open(out / "phone_x4.png") as rotated, Image.open(out / "upright_x4.png") as plain:
        assert 0x0112 not in rotated.getexif()
        assert rotated.size == plain.size == (4 * LR_SHAPE[1], 4 * LR_SHAPE[0])
        np.testing.assert_array_equal(np.asarray(rotated), np.asarray(plain))
