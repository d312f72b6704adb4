"""Training stream (alignment, joint augmentation, determinism, resume, shards), bad input,
benchmark layouts and the TFDS path (mocked, no network)."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs.x4 import get_config
from lfcsr_jax.input import benchmarks, image_io, input_pipeline
from lfcsr_jax.input.imresize import imresize, modcrop


def _photo(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth-ish random RGB image (natural images are smooth; noise would be too easy)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def _folder(path: Path, shapes, seed: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(shapes):
        image_io.write_png(path / f"{i:04d}.png", _photo(seed + i, h, w))
    return path


def _cfg(source: str = "folder", lr_patch: int = 8, **fields):
    cfg = get_config("tiny").input
    cfg.source = source
    cfg.lr_patch = lr_patch
    cfg.prefetch = 1
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def _take(iterator, n: int) -> list[dict]:
    return list(itertools.islice(iterator, n))


def _d8(x: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    if hflip:
        x = x[:, ::-1]
    if vflip:
        x = x[::-1]
    if transpose:
        x = np.swapaxes(x, 0, 1)
    return x


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory) -> Path:
    return _folder(tmp_path_factory.mktemp("hr"), [(96, 96), (80, 120), (100, 72)])


# --------------------------------------------------------------------------- training stream.


def test_batches_have_the_documented_shapes(hr_folder):
    batch = next(input_pipeline.create_train_iterator(_cfg(hr_dir=str(hr_folder)), 4, 4, 0))
    assert batch["lr"].shape == (4, 8, 8, 3) and batch["lr"].dtype == np.uint8
    assert batch["hr"].shape == (4, 32, 32, 3) and batch["hr"].dtype == np.uint8


def test_lr_crop_is_imresize_of_hr_crop(hr_folder):
    cfg = _cfg(hr_dir=str(hr_folder), lr_patch=12)
    batches = _take(input_pipeline.create_train_iterator(cfg, 4, 8, seed=3), 2)
    for lr, hr in zip(np.concatenate([b["lr"] for b in batches]),
                      np.concatenate([b["hr"] for b in batches])):
        # Away from the patch border (2 LR pixels: the 16-tap kernel reaches 8 HR pixels out) the
        # LR of the crop equals the crop of the LR; flips commute with the symmetric kernel, the
        # transpose only swaps the pass order (hence +-1 from the uint8 rounding).
        ref = imresize(hr, 0.25).astype(int)
        assert np.abs(ref[2:-2, 2:-2] - lr[2:-2, 2:-2]).max() <= 1
        # A one-pixel misalignment would be far off: the check has teeth.
        assert np.abs(ref[3:-1, 2:-2] - lr[2:-2, 2:-2]).max() > 1


def test_augmentation_is_joint_and_covers_all_eight(tmp_path):
    # One image whose LR is exactly one patch: every example is a D8 transform of the whole image.
    folder = _folder(tmp_path / "one", [(32, 32)], seed=7)
    hr_full = image_io.read_image(folder / "0000.png")
    lr_full = imresize(hr_full, 0.25)
    batches = _take(input_pipeline.create_train_iterator(_cfg(hr_dir=str(folder)), 4, 16, 1), 4)
    seen = set()
    for lr, hr in zip(np.concatenate([b["lr"] for b in batches]),
                      np.concatenate([b["hr"] for b in batches])):
        matches = [f for f in itertools.product([False, True], repeat=3)
                   if np.array_equal(hr, _d8(hr_full, *f))]
        assert len(matches) == 1
        np.testing.assert_array_equal(lr, _d8(lr_full, *matches[0]))
        seen.add(matches[0])
    assert len(seen) == 8


def test_patches_are_scale_aligned_crops_of_portrait_and_landscape_images(tmp_path):
    folder = _folder(tmp_path / "orient", [(48, 32), (32, 44)], seed=11)
    fulls = [image_io.read_image(folder / f"000{i}.png") for i in range(2)]
    batches = _take(input_pipeline.create_train_iterator(_cfg(hr_dir=str(folder)), 4, 8, 4), 2)
    sources = set()
    for hr in np.concatenate([b["hr"] for b in batches]):
        found = [(k, top, left) for k, full in enumerate(fulls)
                 for top in range(0, full.shape[0] - 31, 4)
                 for left in range(0, full.shape[1] - 31, 4)
                 for f in itertools.product([False, True], repeat=3)
                 if np.array_equal(hr, _d8(full[top:top + 32, left:left + 32], *f))]
        assert found, "patch is not a D8 transform of any scale-aligned crop"
        sources.add(found[0][0])
    assert sources == {0, 1}


def test_same_seed_same_stream_other_seed_other_stream(hr_folder):
    cfg = _cfg(hr_dir=str(hr_folder))
    a = _take(input_pipeline.create_train_iterator(cfg, 4, 4, seed=5), 3)
    b = _take(input_pipeline.create_train_iterator(cfg, 4, 4, seed=5), 3)
    c = _take(input_pipeline.create_train_iterator(cfg, 4, 4, seed=6), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["hr"], y["hr"])
        np.testing.assert_array_equal(x["lr"], y["lr"])
    assert any(not np.array_equal(x["hr"], z["hr"]) for x, z in zip(a, c))


def test_resumed_stream_is_the_tail_of_the_uninterrupted_one(hr_folder):
    cfg = _cfg(hr_dir=str(hr_folder))
    full = _take(input_pipeline.create_train_iterator(cfg, 4, 4, seed=2), 6)
    resumed = _take(input_pipeline.create_train_iterator(cfg, 4, 4, seed=2, start_step=4), 2)
    for x, y in zip(full[4:], resumed):
        np.testing.assert_array_equal(x["hr"], y["hr"])
        np.testing.assert_array_equal(x["lr"], y["lr"])


def test_two_processes_split_each_global_batch(hr_folder):
    cfg = _cfg(hr_dir=str(hr_folder))
    whole = _take(input_pipeline.create_train_iterator(cfg, 4, 4, seed=9), 3)
    parts = [_take(input_pipeline.create_train_iterator(cfg, 4, 4, seed=9, process_index=p,
                                                         process_count=2), 3) for p in (0, 1)]
    for step in range(3):
        p0, p1 = parts[0][step], parts[1][step]
        assert p0["hr"].shape == (2, 32, 32, 3)
        assert not np.array_equal(p0["hr"], p1["hr"])
        for key in ("lr", "hr"):
            np.testing.assert_array_equal(np.concatenate([p0[key], p1[key]]), whole[step][key])


def test_batch_not_divisible_by_processes(hr_folder):
    with pytest.raises(ValueError, match="not divisible"):
        input_pipeline.create_train_iterator(_cfg(hr_dir=str(hr_folder)), 4, 5, 0,
                                             process_count=2)


def test_every_image_is_used_once_per_pass(tmp_path):
    # Constant images 0..4: a pass of 5 examples must hold each value exactly once.
    folder = tmp_path / "const"
    folder.mkdir()
    for v in range(5):
        image_io.write_png(folder / f"{v}.png", np.full((32, 40, 3), 10 * v, np.uint8))
    batches = _take(input_pipeline.create_train_iterator(_cfg(hr_dir=str(folder)), 4, 5, 0), 3)
    for b in batches:
        assert sorted(b["hr"][:, 0, 0, 0].tolist()) == [0, 10, 20, 30, 40]
        np.testing.assert_array_equal(b["lr"][:, 0, 0, 0], b["hr"][:, 0, 0, 0])


def test_paired_folders_use_the_given_lr(tmp_path):
    hr_dir = _folder(tmp_path / "HR", [(64, 48)])
    lr_dir = tmp_path / "LR"
    # A marker LR (not the imresize of HR) proves the given files are used, DIV2K names.
    image_io.write_png(lr_dir / "0000x4.png", np.full((16, 12, 3), 123, np.uint8))
    batch = next(input_pipeline.create_train_iterator(
        _cfg("paired", hr_dir=str(hr_dir), lr_dir=str(lr_dir)), 4, 2, 0))
    assert np.all(batch["lr"] == 123)


def test_grayscale_and_rgba_files_train(tmp_path):
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(_photo(0, 40, 40)[:, :, 0], "L").save(folder / "gray.png")
    rgba = np.concatenate([_photo(1, 40, 40), np.full((40, 40, 1), 3, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    batch = next(input_pipeline.create_train_iterator(_cfg(hr_dir=str(folder)), 4, 2, 0))
    assert batch["hr"].shape == (2, 32, 32, 3)


# --------------------------------------------------------------------------- bad input.


def _assert_load_fails(cfg, exc, *patterns):
    with pytest.raises(exc) as info:
        input_pipeline.create_train_iterator(cfg, 4, 2, 0)
    for pattern in patterns:
        assert pattern in str(info.value), (pattern, str(info.value))


def test_corrupt_truncated_and_non_image_files_name_the_file(tmp_path):
    good = _folder(tmp_path / "good", [(64, 64)])
    data = (good / "0000.png").read_bytes()
    cases = {"truncated.png": data[: len(data) // 2], "notes.png": b"just text\n",
             "corrupt.png": data[:60] + bytes(200) + data[260:]}
    for name, content in cases.items():
        folder = _folder(tmp_path / name.split(".")[0], [(64, 64)])
        (folder / name).write_bytes(content)
        _assert_load_fails(_cfg(hr_dir=str(folder)), image_io.ImageReadError, str(folder / name))


def test_image_smaller_than_one_patch_names_the_file(tmp_path):
    folder = _folder(tmp_path / "small", [(64, 64), (40, 28)])
    _assert_load_fails(_cfg(hr_dir=str(folder)), ValueError, str(folder / "0001.png"),
                       "smaller than one HR patch 32x32")


def test_lr_hr_size_mismatch_names_both_files(tmp_path):
    hr_dir = _folder(tmp_path / "HR", [(64, 64)])
    lr_dir = _folder(tmp_path / "LR", [(17, 16)])
    _assert_load_fails(_cfg("paired", hr_dir=str(hr_dir), lr_dir=str(lr_dir)), ValueError,
                       str(hr_dir / "0000.png"), str(lr_dir / "0000.png"), "mismatch")


def test_missing_lr_file_names_the_hr_file(tmp_path):
    hr_dir = _folder(tmp_path / "HR", [(64, 64), (64, 64)])
    lr_dir = tmp_path / "LR"
    image_io.write_png(lr_dir / "0000x4.png", np.zeros((16, 16, 3), np.uint8))
    _assert_load_fails(_cfg("paired", hr_dir=str(hr_dir), lr_dir=str(lr_dir)), FileNotFoundError,
                       str(hr_dir / "0001.png"))


def test_empty_folder_wrong_path_and_unset_field(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_load_fails(_cfg(hr_dir=str(tmp_path / "empty")), FileNotFoundError, "holds no images")
    _assert_load_fails(_cfg(hr_dir=str(tmp_path / "nope")), FileNotFoundError, "does not exist")
    _assert_load_fails(_cfg(hr_dir=""), ValueError, "config.input.hr_dir")
    _assert_load_fails(_cfg("nonsense"), ValueError, "config.input.source")


# --------------------------------------------------------------------------- evaluation images.


def test_validation_from_folder_makes_lr_with_imresize(tmp_path):
    val = _folder(tmp_path / "val", [(50, 45), (64, 64), (64, 64)])
    cfg = _cfg(val_hr_dir=str(val), val_count=2)
    items = input_pipeline.load_validation_set(cfg, 4)
    assert [x["name"] for x in items] == ["0000", "0001"]
    assert items[0]["hr"].shape == (48, 44, 3)
    np.testing.assert_array_equal(items[0]["lr"], imresize(modcrop(_photo(0, 50, 45), 4), 0.25))
    assert input_pipeline.load_validation_set(_cfg(val_hr_dir=""), 4) == []


def test_skimage_source_holds_out_distinct_validation_photos():
    cfg = get_config("tiny").input
    items = input_pipeline.load_validation_set(cfg, 4)
    assert len(items) == cfg.val_count
    names = {x["name"] for x in items}
    assert not names & {Path(n).stem for n in input_pipeline.SKIMAGE_TRAIN}
    batch = next(input_pipeline.create_train_iterator(cfg, 4, 4, 0))
    assert batch["hr"].shape == (4, 32, 32, 3)


def test_selfexsr_original_and_hr_only_layouts(tmp_path):
    hr = _photo(4, 48, 40)
    lr = imresize(hr, 0.25)
    image_io.write_png(tmp_path / "A" / "image_SRF_4" / "img_001_SRF_4_HR.png", hr)
    image_io.write_png(tmp_path / "A" / "image_SRF_4" / "img_001_SRF_4_LR.png", lr // 2)
    got = benchmarks.load_benchmark(tmp_path / "A")
    assert got[0]["name"] == "img_001_SRF_4"
    np.testing.assert_array_equal(got[0]["lr"], lr // 2)
    image_io.write_png(tmp_path / "B" / "HR" / "pic.png", _photo(5, 50, 41))
    got = benchmarks.load_benchmark(tmp_path / "B")
    assert got[0]["name"] == "pic" and got[0]["hr"].shape == (48, 40, 3)
    np.testing.assert_array_equal(got[0]["lr"], imresize(got[0]["hr"], 0.25))
    with pytest.raises(FileNotFoundError, match="Urban100"):
        benchmarks.find_benchmark(tmp_path, "Urban100")


def test_real_benchmark_layouts_load(shared_data):
    expected = {"Set5": 5, "Set14": 14, "B100": 100}
    for name, count in expected.items():
        items = benchmarks.load_benchmark(benchmarks.find_benchmark(shared_data, name))
        assert len(items) == count, name
        for x in items:
            assert x["hr"].shape[:2] == (x["lr"].shape[0] * 4, x["lr"].shape[1] * 4)
            assert x["hr"].dtype == np.uint8 and x["hr"].shape[2] == 3
    set5 = benchmarks.load_benchmark(shared_data / "benchmarks" / "Set5")
    assert [x["name"] for x in set5] == ["baby", "bird", "butterfly", "head", "woman"]
    bridge = benchmarks.load_benchmark(shared_data / "benchmarks" / "Set14")[2]
    assert bridge["name"] == "bridge"  # the grayscale one: three equal channels.
    assert np.array_equal(bridge["hr"][..., 0], bridge["hr"][..., 2])
    # EDSR layout with MATLAB-exact LR files: regenerating the LR gives identical pixels.
    edsr = shared_data / "imresize_reference" / "Set5_EDSR_SwinIR"
    given = benchmarks.load_benchmark(edsr)
    regenerated = benchmarks.load_benchmark(edsr, regenerate_lr=True)
    assert [x["name"] for x in given] == ["baby", "bird", "butterfly", "head", "woman"]
    for x, y in zip(given, regenerated):
        np.testing.assert_array_equal(x["lr"], y["lr"])
    basicsr = benchmarks.load_benchmark(shared_data / "imresize_reference" /
                                            "Set14_BasicSR_mod12")
    assert len(basicsr) == 14 and all(x["hr"].shape[0] % 12 == 0 for x in basicsr)


def test_train_photos_folder_loads(shared_data):
    cfg = _cfg(hr_dir=str(shared_data / "train_photos" / "HR"), lr_patch=36)
    batch = next(input_pipeline.create_train_iterator(cfg, 4, 2, 0))
    assert batch["hr"].shape == (2, 144, 144, 3)


# --------------------------------------------------------------------------- on-disk LR cache.

_CACHE_SHAPES = [(50, 45), (64, 36)]  # not multiples of 4: the cache must hold the modcrop's LR.


def _no_imresize(*args, **kwargs):
    raise AssertionError("imresize called although the LR should come from the cache")


def _counting_imresize(monkeypatch) -> list:
    calls = []

    def counted(image, scale, **kwargs):
        calls.append(image.shape)
        return imresize(image, scale, **kwargs)

    monkeypatch.setattr(input_pipeline, "imresize", counted)
    return calls


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.iterdir())


def test_second_load_reads_the_lr_cache_and_entries_are_exact(tmp_path, monkeypatch):
    hr_dir = _folder(tmp_path / "hr", _CACHE_SHAPES, seed=20)
    cache = tmp_path / "cache" / "x4"  # missing parents are created.
    cfg = _cfg(hr_dir=str(hr_dir), lr_cache_dir=str(cache))
    first = input_pipeline.load_training_images(cfg, 4)
    entries = _entries(cache)
    assert [e.name[:8] for e in entries] == ["0000_x4_", "0001_x4_"]  # no temp files left.
    assert all(len(e.stem.split("_")[-1]) == 12 for e in entries)
    for entry, (h, w), seed in zip(entries, _CACHE_SHAPES, (20, 21)):
        # Independent of the pipeline: the file decodes to imresize of the modcropped HR, bit-exact.
        np.testing.assert_array_equal(image_io.read_image(entry),
                                      imresize(modcrop(_photo(seed, h, w), 4), 0.25))
    input_pipeline._LR_CACHE.clear()  # a restarted process has no memory cache.
    monkeypatch.setattr(input_pipeline, "imresize", _no_imresize)
    second = input_pipeline.load_training_images(cfg, 4)
    for a, b in zip(first, second):
        assert a.lr.dtype == b.lr.dtype == np.uint8
        np.testing.assert_array_equal(a.lr, b.lr)
        np.testing.assert_array_equal(a.hr, b.hr)
    assert _entries(cache) == entries


def test_validation_and_benchmark_folders_use_the_lr_cache(tmp_path, monkeypatch):
    val = _folder(tmp_path / "val", _CACHE_SHAPES, seed=30)
    image_io.write_png(tmp_path / "bench" / "HR" / "pic.png", _photo(32, 50, 41))
    cache = tmp_path / "cache"
    cfg = _cfg(val_hr_dir=str(val), val_count=2, lr_cache_dir=str(cache))
    val_first = input_pipeline.load_validation_set(cfg, 4)
    bench_first = benchmarks.load_benchmark(tmp_path / "bench", lr_cache_dir=cache)
    assert len(_entries(cache)) == 3
    monkeypatch.setattr(input_pipeline, "imresize", _no_imresize)
    for a, b in zip(val_first + bench_first, input_pipeline.load_validation_set(cfg, 4)
                    + benchmarks.load_benchmark(tmp_path / "bench", lr_cache_dir=cache)):
        assert a["name"] == b["name"]
        np.testing.assert_array_equal(a["lr"], b["lr"])
    np.testing.assert_array_equal(bench_first[0]["lr"], imresize(bench_first[0]["hr"], 0.25))


def test_corrupt_or_wrong_size_cache_entries_are_regenerated(tmp_path, monkeypatch, caplog):
    hr_dir = _folder(tmp_path / "hr", _CACHE_SHAPES, seed=40)
    cache = tmp_path / "cache"
    cfg = _cfg(hr_dir=str(hr_dir), lr_cache_dir=str(cache))
    good = [p.lr for p in input_pipeline.load_training_images(cfg, 4)]
    truncated, wrong_size = _entries(cache)
    truncated.write_bytes(truncated.read_bytes()[:40])
    image_io.write_png(wrong_size, np.zeros((5, 5, 3), np.uint8))
    calls = _counting_imresize(monkeypatch)
    with caplog.at_level("WARNING"):
        again = [p.lr for p in input_pipeline.load_training_images(cfg, 4)]
    assert len(calls) == 2
    for entry in (truncated, wrong_size):
        assert any(str(entry) in r.getMessage() for r in caplog.records), entry
    for a, b, entry in zip(good, again, (truncated, wrong_size)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(image_io.read_image(entry), a)  # rewritten, whole.
    assert _entries(cache) == [truncated, wrong_size]


def test_touched_hr_file_gets_a_new_cache_entry(tmp_path, monkeypatch):
    hr_dir = _folder(tmp_path / "hr", _CACHE_SHAPES, seed=50)
    cache = tmp_path / "cache"
    cfg = _cfg(hr_dir=str(hr_dir), lr_cache_dir=str(cache))
    input_pipeline.load_training_images(cfg, 4)
    old = _entries(cache)
    stat = (hr_dir / "0001.png").stat()
    os.utime(hr_dir / "0001.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls = _counting_imresize(monkeypatch)
    input_pipeline.load_training_images(cfg, 4)
    assert calls == [(64, 36, 3)]  # only the touched file is resized again.
    new = [e for e in _entries(cache) if e not in old]
    assert len(new) == 1 and new[0].name.startswith("0001_x4_")
    # Another scale of the same file is another entry too.
    assert (input_pipeline.lr_cache_path(cache, hr_dir / "0000.png", 2)
            != input_pipeline.lr_cache_path(cache, hr_dir / "0000.png", 4))


def test_cache_dir_equal_to_or_inside_the_hr_folder_is_refused(tmp_path):
    hr_dir = _folder(tmp_path / "hr", _CACHE_SHAPES, seed=60)
    for cache in (hr_dir, hr_dir / "lr_cache", hr_dir / "." / "sub" / ".."):
        cfg = _cfg(hr_dir=str(hr_dir), lr_cache_dir=str(cache))
        with pytest.raises(ValueError, match=re.escape(str(hr_dir.resolve()))) as info:
            input_pipeline.load_training_images(cfg, 4)
        assert str(cache) in str(info.value) and "lr_cache_dir" in str(info.value)
        cfg = _cfg(val_hr_dir=str(hr_dir), lr_cache_dir=str(cache))
        with pytest.raises(ValueError, match="lr_cache_dir"):
            input_pipeline.load_validation_set(cfg, 4)
    assert sorted(p.name for p in hr_dir.iterdir()) == ["0000.png", "0001.png"]  # nothing written.
    with pytest.raises(ValueError, match="lr_cache_dir"):
        benchmarks.load_benchmark(hr_dir, lr_cache_dir=hr_dir / "cache")
    # A sibling whose name merely starts like the HR folder is fine.
    input_pipeline.load_training_images(
        _cfg(hr_dir=str(hr_dir), lr_cache_dir=str(tmp_path / "hr_cache")), 4)


def test_empty_cache_dir_keeps_the_memory_cache(tmp_path, monkeypatch):
    hr_dir = _folder(tmp_path / "hr", _CACHE_SHAPES, seed=70)
    cfg = _cfg(hr_dir=str(hr_dir), lr_cache_dir="")
    first = input_pipeline.load_training_images(cfg, 4)
    monkeypatch.setattr(input_pipeline, "imresize", _no_imresize)
    second = input_pipeline.load_training_images(cfg, 4)  # same process: from memory.
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.lr, b.lr)
    assert [p.name for p in tmp_path.iterdir()] == ["hr"]
    assert sorted(p.name for p in hr_dir.iterdir()) == ["0000.png", "0001.png"]


def test_benchmark_names_reads_index_csv(tmp_path):
    (tmp_path / "index.csv").write_text("hr_file,canonical_name\nHR/img_001_SRF_4_HR.png,baby\n")
    assert benchmarks.benchmark_names(tmp_path) == {"img_001_SRF_4_HR.png": "baby"}
    assert benchmarks.benchmark_names(tmp_path / "missing") == {}
    (tmp_path / "index.csv").write_text("file,name\na.png,a\n")
    with pytest.raises(ValueError, match="index.csv"):
        benchmarks.benchmark_names(tmp_path)


# --------------------------------------------------------------------------- TFDS (mocked).


def _fake_div2k(self, split, **kwargs):
    """Stands in for div2k/bicubic_x4: image k has HR and LR filled with 10 * (k + 1)."""
    tf = input_pipeline._tf()
    count = 2 if "validation" in str(split) else 3

    def examples():
        for k in range(count):
            yield {"hr": np.full((48, 40 + 4 * k, 3), 10 * (k + 1), np.uint8),
                   "lr": np.full((12, 10 + k, 3), 10 * (k + 1), np.uint8)}

    spec = {"hr": tf.TensorSpec((None, None, 3), tf.uint8),
            "lr": tf.TensorSpec((None, None, 3), tf.uint8)}
    return tf.data.Dataset.from_generator(examples, output_signature=spec)


def test_tfds_div2k_path_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = _cfg("tfds", tfds_data_dir=str(tmp_path), val_count=2)
    with tfds.testing.mock_data(as_dataset_fn=_fake_div2k):
        batches = _take(input_pipeline.create_train_iterator(cfg, 4, 3, 0), 2)
        val = input_pipeline.load_validation_set(cfg, 4)
    for b in batches:
        values = b["hr"][:, 0, 0, 0]
        assert sorted(values.tolist()) == [10, 20, 30]  # one pass over the 3 images.
        assert np.all(b["hr"] == values[:, None, None, None])
        assert np.all(b["lr"] == values[:, None, None, None])
    assert len(val) == 2 and val[1]["hr"].shape == (48, 44, 3) and val[1]["lr"].shape == (12, 11, 3)
