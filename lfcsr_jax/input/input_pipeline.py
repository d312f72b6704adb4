"""Training patches and validation images: TFDS DIV2K, image folders, scikit-image photos.

Every source is decoded ONCE into memory and checked before training starts (unreadable files,
too-small images and LR/HR size mismatches raise errors naming the files). LR made from HR-only
files by MATLAB-bicubic imresize is cached in memory, or, with config.input.lr_cache_dir, as PNG
files there that later runs (restarts after preemption) read back. The training stream is
index-based: global example i = step * global_batch + slot decides, through stateless RNG keyed by
(seed, i), which image (a fresh permutation of the images every len(images) examples), the crop
offset and the three flips. Hence the stream is deterministic, process p of P produces slots
[p*b, (p+1)*b) of every global batch (b = global_batch / P), and resuming is starting at a step:
no tf.data iterator state is ever saved.

All images of one resolution are packed row-wise into one (rows, width, 3) buffer (portrait
images stored transposed): a crop is one `tf.slice` of that buffer, then the flips and the
transpose are reversals and a transpose of the small patch. The same (top, left) and flips, scaled,
cut the HR patch, so LR and HR stay aligned. Benchmark folders are read by `lfcsr_jax.input.benchmarks`
with the pair builders here (`pairs_from_hr_files`, `pairs_from_folders`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from lfcsr_jax import paths
from lfcsr_jax.configuration import INPUT_SOURCES
from lfcsr_jax.input import image_io
from lfcsr_jax.input.imresize import imresize, modcrop

# scikit-image's bundled photos (no network). Validation photos are distinct scenes from training
# (motorcycle_left/right are one scene, so both train), and natural photos: a synthetic gradient
# (color.png) is one that bicubic interpolation reproduces almost exactly (53 dB).
SKIMAGE_TRAIN = ("astronaut.png", "motorcycle_left.png", "motorcycle_right.png", "ihc.png",
                 "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg")
SKIMAGE_VALIDATION = ("chelsea.png", "coffee.png", "camera.png")

_LR_CACHE: dict[tuple[Any, ...], np.ndarray] = {}  # LR made by imresize, keyed by file + scale.


def _tf():
    """TensorFlow, with every GPU hidden from it so it never takes the accelerator from JAX."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # already initialised (by an earlier call): the setting stands.
        pass
    return tf


# ---------------------------------------------------------------------------------------------
# Decoded images.


@dataclasses.dataclass(frozen=True)
class ImagePair:
    """An HR image (modcropped) with its LR; `hr.shape[:2] == lr.shape[:2] * scale`."""

    name: str
    hr: np.ndarray
    lr: np.ndarray
    origin: str = ""  # the file (or TFDS record) it came from, for error messages.

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "hr": self.hr}


def checked_pair(hr: np.ndarray, lr: np.ndarray, scale: int, hr_name: str,
                  lr_name: str) -> ImagePair:
    """Crops HR top-left to LR * scale; an error naming both files when the sizes disagree."""
    lr_h, lr_w = lr.shape[:2]
    if hr.shape[0] // scale != lr_h or hr.shape[1] // scale != lr_w:
        raise ValueError(
            f"LR/HR size mismatch for x{scale}: HR {hr_name} is {hr.shape[1]}x{hr.shape[0]} "
            f"(W x H) but LR {lr_name} is {lr_w}x{lr_h}; expected LR {hr.shape[1] // scale}x"
            f"{hr.shape[0] // scale}")
    return ImagePair(Path(hr_name).stem, hr[: lr_h * scale, : lr_w * scale], lr, origin=hr_name)


def lr_from_hr(hr: np.ndarray, scale: int, key: Any = None) -> ImagePair:
    """(modcropped HR, MATLAB-bicubic LR); the LR is cached in memory under `key` when given."""
    hr = modcrop(hr, scale)
    if key is not None and (key, scale) in _LR_CACHE:
        return ImagePair(str(key), hr, _LR_CACHE[(key, scale)])
    lr = imresize(hr, 1.0 / scale)
    if key is not None:
        _LR_CACHE[(key, scale)] = lr
    return ImagePair(str(key), hr, lr)


def _file_key(path: paths.PathLike) -> tuple[str, int, int]:
    name, size, version = paths.file_identity(path)
    return (name, version, size)


def lr_cache_path(cache_dir: paths.PathLike, hr_path: paths.PathLike, scale: int) -> paths.Path:
    """`<stem>_x<scale>_<hash12>.png`: the hash of (absolute path, size, mtime_ns or object
    generation, scale) makes an edited, replaced or touched HR file miss, and two folders'
    same-named files differ."""
    name, size, version = paths.file_identity(hr_path)
    ident = f"{name}\0{size}\0{version}\0{scale}"
    digest = hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return paths.location(cache_dir) / f"{paths.location(hr_path).stem}_x{scale}_{digest}.png"


def _canonical(path: paths.PathLike) -> str:
    """Comparable form of a folder: resolved symlinks locally, the normalised URI remotely."""
    if paths.is_remote(path):
        return os.fspath(paths.location(path))
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def _check_cache_dir(cache_dir: paths.PathLike, hr_dirs: Sequence[paths.PathLike]) -> paths.Path:
    """The cache folder (created); a ValueError if it is, or lies inside, an HR folder."""
    cache = _canonical(cache_dir)
    for hr_dir in {_canonical(d) for d in hr_dirs}:
        if cache == hr_dir or cache.startswith(hr_dir.rstrip("/") + "/"):
            raise ValueError(
                f"config.input.lr_cache_dir {str(cache_dir)!r} ({cache}) is the HR image folder "
                f"{hr_dir} or inside it; generated LR images must not be written among the "
                "inputs: choose a folder outside it")
    folder = paths.location(cache)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"config.input.lr_cache_dir: cannot create {cache}: {e}") from e
    return folder


def _read_cached_lr(entry: paths.Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached LR, or None (with a warning when the file exists but is unusable)."""
    if not entry.is_file():
        return None
    try:
        lr = image_io.read_image(entry)
    except (image_io.ImageReadError, OSError, ValueError) as e:
        logging.warning("input: LR cache entry %s is unreadable (%s); regenerating it", entry, e)
        return None
    if lr.shape != shape:
        logging.warning("input: LR cache entry %s is %s, expected %s; regenerating it", entry,
                        lr.shape, shape)
        return None
    return lr


def _write_cached_lr(entry: paths.Path, lr: np.ndarray) -> None:
    """A whole entry or none (paths.write_bytes_atomic), even if this process dies mid-write or
    several processes write the same entry."""
    encoded = io.BytesIO()
    Image.fromarray(lr).save(encoded, format="PNG")
    try:
        paths.write_bytes_atomic(entry, encoded.getvalue())
    except OSError as e:  # full disk, read-only folder: the run goes on without this entry.
        logging.warning("input: cannot write LR cache entry %s (%s)", entry, e)


def _pair_from_hr_file(path: paths.Path, scale: int,
                       cache_dir: paths.Path | None = None) -> ImagePair:
    """(HR, LR) of an HR-only file; the LR from `cache_dir` when a valid entry is there, else
    imresize (written back to `cache_dir` when given, else cached in memory)."""
    hr = image_io.read_image(path)
    if min(hr.shape[:2]) < scale:
        raise ValueError(f"{path}: {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {scale}")
    if cache_dir is None:
        pair = lr_from_hr(hr, scale, key=_file_key(path))
        return dataclasses.replace(pair, name=path.stem, origin=str(path))
    hr = modcrop(hr, scale)
    entry = lr_cache_path(cache_dir, path, scale)
    lr = _read_cached_lr(entry, (hr.shape[0] // scale, hr.shape[1] // scale, 3))
    if lr is None:
        lr = imresize(hr, 1.0 / scale)  # uint8 in -> uint8 out, so the PNG entry is exact.
        _write_cached_lr(entry, lr)
    return ImagePair(path.stem, hr, lr, origin=str(path))


def pairs_from_hr_files(files: Sequence[paths.PathLike], scale: int,
                         cache_dir: paths.PathLike = "",
                         hr_dirs: Sequence[paths.PathLike] = ()) -> list[ImagePair]:
    """Decode + imresize (or read the LR cache) in threads: PIL's inflate and numpy's BLAS
    release the GIL. `cache_dir` '' caches in memory only; else it must lie outside `hr_dirs`
    and the files' own folders."""
    cache = None
    if cache_dir:
        cache = _check_cache_dir(cache_dir, [*hr_dirs, *(paths.location(p).parent for p in files)])
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: _pair_from_hr_file(paths.location(p), scale, cache),
                             files))


def pair_key(stem: str, scale: int) -> str:
    """Shared name of an HR/LR file pair: drops 'x4' (EDSR/DIV2K) and '_HR'/'_LR' (SelfExSR)."""
    key = stem.lower()
    key = re.sub(rf"x{scale}$", "", key)
    return re.sub(r"_(hr|lr)$", "", key)


def pairs_from_folders(hr_dir: str | os.PathLike, lr_dir: str | os.PathLike, scale: int,
                        limit: int | None = None) -> list[ImagePair]:
    """HR/LR folders matched by name (DIV2K/EDSR 'x4' suffix, SelfExSR _HR/_LR, same names)."""
    hr_files = image_io.list_images(hr_dir)[:limit]
    lr_by_key = {pair_key(p.stem, scale): p for p in image_io.list_images(lr_dir)}
    lr_files = []
    for hr_path in hr_files:
        lr_path = lr_by_key.get(pair_key(hr_path.stem, scale))
        if lr_path is None:
            raise FileNotFoundError(
                f"no LR image in {lr_dir} for HR {hr_path} (looked for a file named like "
                f"{hr_path.stem}x{scale}, {hr_path.stem} or with _LR for _HR)")
        lr_files.append(lr_path)
    hrs = image_io.read_images(hr_files)
    lrs = image_io.read_images(lr_files)
    return [checked_pair(hr, lr, scale, str(hp), str(lp))
            for hr, lr, hp, lp in zip(hrs, lrs, hr_files, lr_files)]


def _skimage_files(names: Sequence[str]) -> list[Path]:
    import skimage  # pylint: disable=import-outside-toplevel

    data_dir = Path(skimage.__file__).parent / "data"
    paths = [data_dir / name for name in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-image sample photos missing: {missing}")
    return paths


def _tfds_pairs(input_cfg: Any, split: str, scale: int) -> list[ImagePair]:
    """Decodes a TFDS split with 'hr'/'lr' images (div2k/bicubic_x4) into memory."""
    tf = _tf()
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    builder = tfds.builder(input_cfg.tfds_name, data_dir=input_cfg.tfds_data_dir or None)
    download_config = None
    if input_cfg.tfds_manual_dir:
        download_config = tfds.download.DownloadConfig(manual_dir=input_cfg.tfds_manual_dir)
    builder.download_and_prepare(download_config=download_config)
    ds = builder.as_dataset(split=split, shuffle_files=False)
    del tf
    pairs = []
    for index, example in enumerate(tfds.as_numpy(ds)):
        name = f"{input_cfg.tfds_name}:{split}[{index}]"
        pair = checked_pair(np.asarray(example["hr"]), np.asarray(example["lr"]), scale,
                             name + "/hr", name + "/lr")
        pairs.append(dataclasses.replace(pair, name=f"{split.split('[')[0]}_{index:04d}",
                                         origin=name))
    if not pairs:
        raise ValueError(f"TFDS {input_cfg.tfds_name} split {split!r} is empty")
    return pairs


def load_training_images(input_cfg: Any, scale: int) -> list[ImagePair]:
    """All training images decoded and checked: each LR must hold one `lr_patch` crop."""
    source = input_cfg.source
    if source == "tfds":
        pairs = _tfds_pairs(input_cfg, "train", scale)
    elif source == "folder":
        hr_dir = _required(input_cfg, "hr_dir")
        pairs = pairs_from_hr_files(image_io.list_images(hr_dir), scale,
                                     input_cfg.lr_cache_dir, [hr_dir])
    elif source == "paired":
        pairs = pairs_from_folders(_required(input_cfg, "hr_dir"),
                                    _required(input_cfg, "lr_dir"), scale)
    elif source == "skimage":
        pairs = pairs_from_hr_files(_skimage_files(SKIMAGE_TRAIN), scale,
                                     input_cfg.lr_cache_dir)
    else:
        raise ValueError(f"config.input.source: unknown {source!r}; expected one of "
                         f"{INPUT_SOURCES}")
    patch = input_cfg.lr_patch
    for pair in pairs:
        if min(pair.lr.shape[:2]) < patch:
            raise ValueError(
                f"training image {pair.origin or pair.name} is "
                f"{pair.hr.shape[1]}x{pair.hr.shape[0]} (LR {pair.lr.shape[1]}x{pair.lr.shape[0]}),"
                f" smaller than one HR patch {patch * scale}x{patch * scale} (LR {patch}x{patch})")
    return pairs


def _required(input_cfg: Any, field: str) -> str:
    value = getattr(input_cfg, field)
    if not value:
        raise ValueError(f"config.input.{field} must be set for source {input_cfg.source!r}")
    return value

# ---------------------------------------------------------------------------------------------
# The training stream.


@dataclasses.dataclass(frozen=True)
class _Packed:
    """One resolution of all images stacked row-wise into a (rows, max width, 3) buffer.

    Portrait images are stored transposed, so that DIV2K (long side 2040) wastes almost no
    padding; a crop is then a plain 2-D slice (much cheaper than a per-pixel gather).
    """

    pixels_RxWx3: np.ndarray
    row0_I: np.ndarray  # first buffer row of each image.
    height_I: np.ndarray  # original (un-transposed) height and width.
    width_I: np.ndarray
    transposed_I: np.ndarray  # stored transposed.


def _pack(images: Sequence[np.ndarray], transposed_I: np.ndarray) -> _Packed:
    stored = [im.transpose(1, 0, 2) if t else im for im, t in zip(images, transposed_I)]
    rows = np.array([im.shape[0] for im in stored], np.int64)
    pixels = np.zeros((int(rows.sum()), max(im.shape[1] for im in stored), 3), np.uint8)
    row0 = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    for start, im in zip(row0, stored):
        pixels[start: start + im.shape[0], : im.shape[1]] = im
    return _Packed(pixels, row0, np.array([im.shape[0] for im in images], np.int64),
                   np.array([im.shape[1] for im in images], np.int64), np.asarray(transposed_I))


def _crop(tf, packed: dict, image, top, left, size: int):
    """size x size x 3 crop at (top, left) of image `image` (original orientation)."""
    transposed = packed["transposed"][image]
    row = packed["row0"][image] + tf.where(transposed, left, top)
    col = tf.where(transposed, top, left)
    patch = tf.slice(packed["pixels"], tf.stack([row, col, 0]), [size, size, 3])
    return tf.cond(transposed, lambda: tf.transpose(patch, [1, 0, 2]), lambda: patch)


def _augment(tf, patch_HxWxC, flips):
    """transpose?(vflip?(hflip?(patch))): the same `flips` for LR and HR keep them aligned."""
    hflip, vflip, transpose = flips[0], flips[1], flips[2]
    patch_HxWxC = tf.cond(hflip, lambda: tf.reverse(patch_HxWxC, [1]), lambda: patch_HxWxC)
    patch_HxWxC = tf.cond(vflip, lambda: tf.reverse(patch_HxWxC, [0]), lambda: patch_HxWxC)
    return tf.cond(transpose, lambda: tf.transpose(patch_HxWxC, [1, 0, 2]), lambda: patch_HxWxC)


def _example_fn(tf, hr: dict, lr: dict, num_images: int, seed: int, lr_patch: int, scale: int):
    """Global example index -> {'lr', 'hr'} patch; a pure function of (seed, index)."""
    perm_key = tf.constant([seed, 1], tf.int64)
    crop_key = tf.constant([seed, 2], tf.int64)

    def example(index):
        # A fresh permutation of the images every num_images examples: all are seen equally often.
        epoch, position = index // num_images, index % num_images
        order = tf.random.experimental.stateless_shuffle(
            tf.range(num_images, dtype=tf.int64),
            seed=tf.random.experimental.stateless_fold_in(perm_key, epoch))
        image = order[position]
        keys = tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(crop_key, index), num=3)
        top = tf.random.stateless_uniform([], keys[0], 0, lr["height"][image] - lr_patch + 1,
                                          dtype=tf.int64)
        left = tf.random.stateless_uniform([], keys[1], 0, lr["width"][image] - lr_patch + 1,
                                           dtype=tf.int64)
        flips = tf.random.stateless_uniform([3], keys[2]) < 0.5  # hflip, vflip, transpose.
        lr_patch_PxPx3 = _crop(tf, lr, image, top, left, lr_patch)
        hr_patch_SPxSPx3 = _crop(tf, hr, image, top * scale, left * scale, lr_patch * scale)
        return {"lr": _augment(tf, lr_patch_PxPx3, flips),
                "hr": _augment(tf, hr_patch_SPxSPx3, flips)}

    return example


def _to_tf(tf, packed: _Packed) -> dict:
    # A variable is captured by handle, so the (possibly multi-GB) pixels are never serialised
    # into the tf.data graph, and never copied per element.
    return {"pixels": tf.Variable(packed.pixels_RxWx3, trainable=False),
            "row0": tf.constant(packed.row0_I), "height": tf.constant(packed.height_I),
            "width": tf.constant(packed.width_I), "transposed": tf.constant(packed.transposed_I)}


def make_train_dataset(images: Sequence[ImagePair], *, scale: int, lr_patch: int,
                       global_batch_size: int, seed: int, start_step: int = 0,
                       process_index: int = 0, process_count: int = 1, prefetch: int = 4):
    """tf.data stream of this process' batches from decoded images, starting at `start_step`."""
    tf = _tf()
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by the "
                         f"{process_count} processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    if not images:
        raise ValueError("no training images")
    local = global_batch_size // process_count
    portrait_I = np.array([im.hr.shape[0] > im.hr.shape[1] for im in images])
    example = _example_fn(tf, _to_tf(tf, _pack([im.hr for im in images], portrait_I)),
                          _to_tf(tf, _pack([im.lr for im in images], portrait_I)), len(images),
                          seed, lr_patch, scale)

    @tf.autograph.experimental.do_not_convert  # plain TF ops; nothing for autograph to rewrite.
    def local_example(n):
        # This process' n-th example is slot process_index * local + n % local of global step
        # n // local: the processes' shards are disjoint and together form each global batch.
        step, slot = n // local, process_index * local + n % local
        return example(step * global_batch_size + slot)

    ds = tf.data.Dataset.range(start_step * local, 2**62)
    ds = ds.map(local_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True)
    return ds.prefetch(prefetch)


def create_train_iterator(input_cfg: Any, scale: int, global_batch_size: int, seed: int,
                          start_step: int = 0, process_index: int = 0,
                          process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Endless {'lr': uint8 (b, p, p, 3), 'hr': uint8 (b, p*scale, p*scale, 3)} batches.

    b = global_batch_size // process_count; batch k is global step start_step + k, so resuming
    a run at step t gives exactly the batches the uninterrupted run would have seen.
    """
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by the "
                         f"{process_count} processes")
    images = load_training_images(input_cfg, scale)
    logging.info("input: %d training images decoded (%s)", len(images), input_cfg.source)
    ds = make_train_dataset(images, scale=scale, lr_patch=input_cfg.lr_patch,
                            global_batch_size=global_batch_size, seed=seed,
                            start_step=start_step, process_index=process_index,
                            process_count=process_count, prefetch=input_cfg.prefetch)
    return ds.as_numpy_iterator()


# ---------------------------------------------------------------------------------------------
# Whole images for validation (the benchmark sets: lfcsr_jax.input.benchmarks).


def load_validation_set(input_cfg: Any, scale: int) -> list[dict[str, Any]]:
    """[{'name', 'lr', 'hr'}] whole validation images (HR modcropped), at most val_count.

    tfds: 'validation[:val_count]' (DIV2K 0801-0810); skimage: held-out photos; folder/paired:
    val_hr_dir (+ val_lr_dir, else LR by imresize), or [] with a warning when it is unset.
    """
    count = input_cfg.val_count
    source = input_cfg.source
    if source == "tfds":
        pairs = _tfds_pairs(input_cfg, f"validation[:{count}]", scale)
    elif source == "skimage":
        pairs = pairs_from_hr_files(_skimage_files(SKIMAGE_VALIDATION[:count]), scale,
                                     input_cfg.lr_cache_dir)
    elif source in ("folder", "paired"):
        if not input_cfg.val_hr_dir:
            logging.warning("config.input.val_hr_dir is empty: no validation images")
            return []
        if input_cfg.val_lr_dir:
            pairs = pairs_from_folders(input_cfg.val_hr_dir, input_cfg.val_lr_dir, scale, count)
        else:
            val_files = image_io.list_images(input_cfg.val_hr_dir)[:count]
            pairs = pairs_from_hr_files(val_files, scale, input_cfg.lr_cache_dir,
                                         [input_cfg.val_hr_dir])
    else:
        raise ValueError(f"config.input.source: unknown {source!r}; expected one of "
                         f"{INPUT_SOURCES}")
    return [pair.as_dict() for pair in pairs]
