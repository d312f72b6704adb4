"""Every image flavour becomes RGB uint8; every unusable file raises an error naming it."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from lfcsr_jax.input import image_io


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


# The stored pixels for each EXIF orientation of an upright photo, written out by hand from the
# tag's meaning (where the stored row 0 / column 0 lie in the upright picture).
_STORED_FOR_ORIENTATION = {
    1: lambda up: up,
    2: lambda up: up[:, ::-1],                     # mirrored left-right
    3: lambda up: up[::-1, ::-1],                  # upside down
    4: lambda up: up[::-1],                        # mirrored top-bottom
    5: lambda up: up.transpose(1, 0, 2),           # mirrored along the main diagonal
    6: lambda up: np.rot90(up, k=1),               # camera turned: shown after 90 deg clockwise
    7: lambda up: up[::-1, ::-1].transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda up: np.rot90(up, k=-1),              # shown after 90 deg counter-clockwise
}


def _save_with_orientation(path, stored, orientation: int, **kwargs) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, exif=exif.tobytes(), **kwargs)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_png(tmp_path, orientation):
    upright = np.random.default_rng(4).integers(0, 256, (5, 7, 3)).astype(np.uint8)  # not square
    path = tmp_path / f"o{orientation}.png"
    _save_with_orientation(path, _STORED_FOR_ORIENTATION[orientation](upright), orientation)
    np.testing.assert_array_equal(image_io.read_image(path), upright)
    # The same as what viewers (and PIL's own helper) show.
    with Image.open(path) as img:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(img).convert("RGB")),
                                      upright)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_jpeg(tmp_path, orientation):
    # A smooth picture, so JPEG's loss stays small; a lossy format is compared with a tolerance.
    yy, xx = np.mgrid[0:32, 0:48]
    upright = np.stack([yy * 7, xx * 5, (yy + xx) * 3], axis=2).astype(np.uint8)
    path = tmp_path / f"o{orientation}.jpg"
    _save_with_orientation(path, _STORED_FOR_ORIENTATION[orientation](upright), orientation,
                           quality=95)
    out = image_io.read_image(path)
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright).mean() < 2.0
    assert np.abs(out.astype(int) - upright).max() < 40  # a wrong rotation differs by ~100s


def test_png_without_exif_is_unchanged(tmp_path):
    stored = np.random.default_rng(5).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    Image.fromarray(stored).save(tmp_path / "plain.png")
    with Image.open(tmp_path / "plain.png") as img:
        assert 0x0112 not in img.getexif()
    np.testing.assert_array_equal(image_io.read_image(tmp_path / "plain.png"), stored)


def test_16bit_png_orientation_is_applied(tmp_path):
    tf = pytest.importorskip("tensorflow")
    upright16 = (np.arange(2 * 3 * 3).reshape(2, 3, 3) * 3000).astype(np.uint16)
    data = tf.io.encode_png(np.ascontiguousarray(_STORED_FOR_ORIENTATION[6](upright16))).numpy()
    # An eXIf chunk (Orientation 6) inserted right after IHDR (8 + 25 bytes).
    exif = Image.Exif()
    exif[0x0112] = 6
    payload = exif.tobytes()
    chunk = (len(payload).to_bytes(4, "big") + b"eXIf" + payload
             + zlib.crc32(b"eXIf" + payload).to_bytes(4, "big"))
    (tmp_path / "r16.png").write_bytes(data[:33] + chunk + data[33:])
    out = image_io.read_image(tmp_path / "r16.png")
    np.testing.assert_array_equal(out, image_io._uint16_to_uint8(upright16))


def test_written_png_carries_no_orientation(tmp_path):
    upright = np.zeros((3, 4, 3), np.uint8)
    image_io.write_png(tmp_path / "out.png", upright)
    with Image.open(tmp_path / "out.png") as img:
        assert 0x0112 not in img.getexif()
        assert img.size == (4, 3)


def test_both_programs_say_in_help_that_images_are_read_upright():
    from lfcsr_jax import evaluate, super_resolve

    for program in (evaluate, super_resolve):
        text = " ".join(program.build_parser().format_help().split())
        assert "EXIF orientation" in text and "no orientation tag" in text
