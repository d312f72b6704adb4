"""Every image flavour becomes RGB uint8; every unusable file raises an error naming it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import image_io


def _gray(h: int = 6, w: int = 5) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3)).astype(np.uint8)


def test_rgb_png_round_trips(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    image_io.write_png(tmp_path / "a" / "x.png", rgb)
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "a" / "x.png"), rgb)


def test_grayscale_is_replicated(tmp_path):
    Image.fromarray(_gray(), "L").save(tmp_path / "g.png")
    out = image_io.read_image(tmp_path / "g.png")
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], _gray())


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped(tmp_path, mode):
    base = np.random.default_rng(1).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    alpha = np.full((6, 5, 1), 9, np.uint8)  # nearly transparent: must not darken the colours.
    if mode == "RGBA":
        array, expected = np.concatenate([base, alpha], axis=2), base
    else:
        array, expected = np.concatenate([_gray()[:, :, None], alpha], axis=2), np.repeat(
            _gray()[:, :, None], 3, axis=2)
    Image.fromarray(array, mode).save(tmp_path / "a.png")
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "a.png"), expected)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_is_expanded(tmp_path, transparent):
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * (256 * 3 - 12)
    index = np.array([[0, 1], [2, 3], [1, 1]], np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette)
    kwargs = {"transparency": 0} if transparent else {}
    img.save(tmp_path / "p.png", **kwargs)
    expected = np.array(palette[:12], np.uint8).reshape(4, 3)[index]
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "p.png"), expected)


def test_16bit_grayscale_uses_matlab_rounding(tmp_path):
    values = np.array([[0, 128, 129, 257], [385, 386, 65535, 40000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    out = image_io.read_image(tmp_path / "g16.png")
    # round(v / 257) by hand: 0, 0.498->0, 0.502->1, 1, 1.498->1, 1.502->2, 255, 155.64->156.
    expected = np.array([[0, 0, 1, 1], [1, 2, 255, 156]], np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    np.testing.assert_array_equal(out[:, :, 2], expected)


def test_16bit_rgb_keeps_full_precision(tmp_path):
    tf = pytest.importorskip("tensorflow")
    values = np.array([[[0, 128, 129], [257, 386, 65535]]], np.uint16)
    (tmp_path / "c16.png").write_bytes(tf.io.encode_png(values).numpy())
    out = image_io.read_image(tmp_path / "c16.png")
    # PIL alone would give the high byte (129 -> 0 ... 386 -> 1); round(v / 257) gives these.
    np.testing.assert_array_equal(out, np.array([[[0, 0, 1], [1, 2, 255]]], np.uint8))


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "corrupt.png"
    good = tmp_path / "good.png"
    image_io.write_png(good, _noise(2))
    data = bytearray(good.read_bytes())
    data[60:200] = bytes(140)  # zero the compressed stream after the header.
    path.write_bytes(bytes(data))
    with pytest.raises(image_io.ImageReadError, match="corrupt.png"):
        image_io.read_image(path)


def test_truncated_file_names_the_file(tmp_path):
    good = tmp_path / "good.png"
    image_io.write_png(good, _noise(3))
    path = tmp_path / "truncated.png"
    path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(image_io.ImageReadError, match="truncated.png"):
        image_io.read_image(path)


def test_non_image_names_the_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(image_io.ImageReadError, match="notes.png.*not an image"):
        image_io.read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(image_io.ImageReadError, match="nothere.png: no such file"):
        image_io.read_image(tmp_path / "nothere.png")


def test_list_images_sorted_and_filtered(tmp_path):
    for name in ("b.png", "a.jpg", "c.PNG"):
        Image.fromarray(_gray(), "L").save(tmp_path / name)
    (tmp_path / "index.csv").write_text("x\n")
    assert [p.name for p in image_io.list_images(tmp_path)] == ["a.jpg", "b.png", "c.PNG"]


def test_list_images_errors_for_empty_and_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no images"):
        image_io.list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_io.list_images(tmp_path / "missing")


def test_read_images_decodes_all_in_order(tmp_path):
    arrays = [np.full((4, 4, 3), v, np.uint8) for v in (1, 2, 3)]
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for p, a in zip(paths, arrays):
        image_io.write_png(p, a)
    out = image_io.read_images(paths, num_threads=2)
    assert [int(o[0, 0, 0]) for o in out] == [1, 2, 3]
