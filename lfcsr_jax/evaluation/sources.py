"""Other methods' SR images as evaluation sources: `evaluate --sr_dir=NAME=FOLDER` (repeatable).

A folder holds one SR image per HR image of a benchmark, either flat (FOLDER/*.png) or one
subfolder per benchmark (FOLDER/Set5/*.png, FOLDER/Set14/*.png; the dataset name is matched
case-insensitively, B100 = BSD100); FOLDER is a local path or a gs:// URI. Each file is matched
to its HR image by name:

- the file stem is lower-cased and the usual method suffixes are stripped: SelfExSR's
  `_SRF_4_<anything>` (img_001_SRF_4_SelfExSR.png), then repeatedly `_x4` / `x4`, `_SR`, `_rlt`,
  `_out`, `_output` (EDSR's babyx4.png, ESRGAN's baby_SR.png, BasicSR's baby_rlt.png);
- the result must equal one name of the HR image: its usual name (baby), its file stem without
  `_HR` / `_SRF_4_HR` (img_001), or that name followed by `_<method tag>` (baby_ESRGAN.png)
  when exactly one HR image has that prefix.

No silent skipping: an HR image with no SR file, two files for one HR image, or a file whose size
differs from the (modcropped) HR raises SourceError naming the file and the folder.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.input import benchmarks, image_io
from lfcsr_jax.paths import Path

# Stripped repeatedly from the end of a lower-cased stem (after the SelfExSR `_srf_N_...` tail).
_SUFFIXES = re.compile(r"(_x\d+|x\d+|_sr|_rlt|_out|_output|_hr)$")
# Names that cannot be a --sr_dir NAME (they are our own sources, see pd_plane.SOURCE_ALIASES).
RESERVED_NAMES = {"bicubic", "y", "y'", "yp", "objective", "perceptual"}


class SourceError(ValueError):
    """A bad --sr_dir: missing, ambiguous or wrong-size image; the message names the file."""


def parse_sr_dirs(specs: Sequence[str]) -> dict[str, Path]:
    """['ESRGAN=/x/esrgan', ...] -> {'ESRGAN': Path}; SourceError on a bad or repeated spec."""
    out: dict[str, Path] = {}
    for spec in specs or ():
        name, sep, folder = spec.partition("=")
        name, folder = name.strip(), folder.strip()
        if not sep or not name or not folder:
            raise SourceError(f"--sr_dir={spec!r}: expected NAME=FOLDER")
        if name.lower() in RESERVED_NAMES or name.startswith("alpha=") or "," in name:
            raise SourceError(f"--sr_dir={spec!r}: NAME {name!r} is reserved or has a comma")
        if name in out:
            raise SourceError(f"--sr_dir: NAME {name!r} given twice")
        path = paths.location(folder)
        if not path.is_dir():
            raise SourceError(f"--sr_dir={spec!r}: folder {path} does not exist")
        out[name] = path
    return out


def stem_key(stem: str, scale: int = 4) -> str:
    """The matching key of an SR (or HR) file stem: lower case, method suffixes stripped."""
    key = stem.lower()
    key = re.sub(rf"_srf_{scale}(_.*)?$", "", key)
    while True:
        stripped = _SUFFIXES.sub("", key)
        if stripped == key or not stripped:
            return key
        key = stripped


def hr_keys(benchmark_dir: paths.PathLike | None, item_names: Sequence[str], scale: int = 4) -> dict[str, set[str]]:
    """item name -> every key it may be matched by (its name and its HR file's stem key)."""
    keys = {name: {stem_key(name, scale), name.lower()} for name in item_names}
    if benchmark_dir is not None:
        for hr_file, canonical in benchmarks.benchmark_names(benchmark_dir).items():
            if canonical in keys:
                keys[canonical].add(stem_key(Path(hr_file).stem, scale))
    return keys


def dataset_folder(root: Path, dataset: str) -> Path:
    """root/<dataset> when root has benchmark subfolders, else root itself (a flat folder)."""
    aliases = {dataset.lower()} | ({"b100", "bsd100"} if dataset.lower() in ("b100", "bsd100") else set())
    subdirs = [p for p in sorted(root.iterdir()) if p.is_dir()]
    for sub in subdirs:
        if sub.name.lower() in aliases:
            return sub
    has_images = any(p.suffix.lower() in image_io.IMAGE_SUFFIXES for p in root.iterdir() if p.is_file())
    if not has_images and subdirs:
        raise SourceError(f"{root}: no subfolder for dataset {dataset} (found "
                          f"{', '.join(p.name for p in subdirs)}) and no images at the top level")
    return root


def match_files(folder: Path, keys: dict[str, set[str]], scale: int = 4) -> dict[str, Path]:
    """item name -> its SR file in `folder`; SourceError naming what is missing or ambiguous."""
    try:
        files = image_io.list_images(folder)
    except FileNotFoundError as e:
        raise SourceError(str(e)) from None
    owner: dict[str, str] = {}
    for name, ks in keys.items():
        for k in ks:
            owner[k] = name
    found: dict[str, list[Path]] = {name: [] for name in keys}
    for path in files:
        key = stem_key(path.stem, scale)
        name = owner.get(key)
        if name is None:  # `<name>_<method tag>`: the longest HR key that prefixes it
            prefixed = sorted((k for k in owner if key.startswith(k + "_")), key=len)
            name = owner[prefixed[-1]] if prefixed else None
        if name is not None:
            found[name].append(path)
    missing = [n for n, paths in found.items() if not paths]
    if missing:
        raise SourceError(f"{folder}: no SR image for {', '.join(missing)} "
                          f"(looked for e.g. {missing[0]}.png, {missing[0]}_x{scale}.png, "
                          f"{missing[0]}_SR.png)")
    double = {n: paths for n, paths in found.items() if len(paths) > 1}
    if double:
        n, paths = next(iter(double.items()))
        raise SourceError(f"{folder}: several SR images match {n}: {', '.join(p.name for p in paths)}")
    return {n: paths[0] for n, paths in found.items()}


def read_matching(path: Path, hr_u8: np.ndarray) -> np.ndarray:
    """The SR image at `path` as float32 RGB, checked against the HR size (SourceError if not)."""
    try:
        sr = image_io.read_image(path)
    except image_io.ImageReadError as e:
        raise SourceError(str(e)) from None
    if sr.shape[:2] != hr_u8.shape[:2]:
        raise SourceError(f"{path}: size {sr.shape[1]}x{sr.shape[0]} (WxH) differs from its HR "
                          f"{hr_u8.shape[1]}x{hr_u8.shape[0]}")
    return sr.astype(np.float32)


class SourceSet:
    """All --sr_dir folders; `files_for(dataset, items)` resolves and checks every file up front."""

    def __init__(self, folders: dict[str, Path], data_dir: paths.PathLike, scale: int = 4):
        self.folders = folders
        self.data_dir = paths.location(data_dir)
        self.scale = scale
        self._files: dict[str, dict[str, Path]] = {}

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def prepare(self, dataset: str, items: Sequence[dict[str, Any]]) -> None:
        """Matches every source's files for this dataset (fails before any scoring)."""
        try:
            bench = benchmarks.find_benchmark(self.data_dir, dataset)
        except FileNotFoundError:
            bench = None
        keys = hr_keys(bench, [item["name"] for item in items], self.scale)
        for name, root in self.folders.items():
            folder = dataset_folder(root, dataset)
            self._files[name] = match_files(folder, keys, self.scale)

    def outputs(self, item: dict[str, Any]) -> dict[str, np.ndarray]:
        return {name: read_matching(files[item["name"]], item["hr"])
                for name, files in self._files.items()}
