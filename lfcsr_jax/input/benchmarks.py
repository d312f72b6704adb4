"""SR benchmark folders (Set5, Set14, BSD100/B100, Urban100, Manga109): find, name and read them.

A benchmark root holds one folder per set, directly or under benchmarks/, benchmark/, testsets/
or datasets/. Inside a set, the known layouts are read as [{'name', 'lr', 'hr'}] whole images
(see `load_benchmark`), with the LR/HR pairing rules of `lfcsr_jax.input.input_pipeline`. A root may
be local or a gs:// URI (lfcsr_jax/paths.py).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, Sequence

from lfcsr_jax import paths
from lfcsr_jax.input import image_io
from lfcsr_jax.input.input_pipeline import (checked_pair, pair_key, pairs_from_folders,
                                            pairs_from_hr_files)
from lfcsr_jax.paths import Path

# Benchmark folder names under a data root; B100 is BSD100's other name.
_BENCHMARK_ALIASES = {"bsd100": ("BSD100", "B100", "bsd100", "b100"),
                      "b100": ("BSD100", "B100", "bsd100", "b100")}


def find_benchmark(data_dir: paths.PathLike, name: str) -> Path:
    """The folder of benchmark `name` (Set5, Set14, BSD100/B100, Urban100, Manga109) under a root.

    Looks at data_dir/<name>, data_dir/{benchmarks,benchmark,testsets,datasets}/<name> and
    data_dir itself, matching names case-insensitively (B100 and BSD100 are one set).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark root {str(root)!r} does not exist")
    wanted = {n.lower() for n in _BENCHMARK_ALIASES.get(name.lower(), (name,))}
    parents = [root] + [root / sub for sub in ("benchmarks", "benchmark", "testsets", "datasets")]
    if root.name.lower() in wanted:
        return root
    for parent in parents:
        if parent.is_dir():
            for child in sorted(parent.iterdir()):
                if child.is_dir() and child.name.lower() in wanted:
                    return child
    raise FileNotFoundError(
        f"benchmark {name!r} not found under {root} (searched {', '.join(map(str, parents))} "
        f"for a folder named {' or '.join(sorted(wanted))})")


def _first_dir(directory: Path, candidates: Sequence[str]) -> Path | None:
    for candidate in candidates:
        if (directory / candidate).is_dir():
            return directory / candidate
    return None


def benchmark_names(directory: paths.PathLike) -> dict[str, str]:
    """HR file name -> usual image name, from a SelfExSR-style index.csv in `directory` ({} when
    there is none)."""
    index = Path(directory) / "index.csv"
    if not index.is_file():
        return {}
    # Decoded whole, newlines kept (as open(newline='') would): csv handles the line ends.
    rows = list(csv.DictReader(io.StringIO(index.read_bytes().decode("utf-8"), newline="")))
    if not rows or "hr_file" not in rows[0] or "canonical_name" not in rows[0]:
        raise ValueError(f"{index}: expected columns hr_file and canonical_name")
    return {Path(row["hr_file"]).name: row["canonical_name"] for row in rows}



def load_benchmark(directory: paths.PathLike, scale: int = 4, *, regenerate_lr: bool = False,
                   lr_cache_dir: paths.PathLike = "") -> list[dict[str, Any]]:
    """[{'name', 'lr', 'hr'}] of a benchmark folder, whole images, HR cropped to LR * scale.

    Layouts: SelfExSR (HR/img_NNN_SRF_4_HR.png + LR_bicubic/X4/img_NNN_SRF_4_LR.png, names from
    index.csv), EDSR (HR/<name>.png + LR_bicubic/X4/<name>x4.png), BasicSR (GTmod12/ +
    LRbicx4/), SelfExSR's original image_SRF_4/ (both in one folder), or HR only (a folder of
    images, or HR/ without LR): the LR is then MATLAB-bicubic imresize of the modcropped HR, as
    it also is for every layout when `regenerate_lr`. Such LR is kept in `lr_cache_dir` when
    given (outside `directory`), else in memory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"benchmark folder {str(directory)!r} does not exist")
    hr_dir = _first_dir(directory, ("HR", "hr", f"GTmod{scale * 3}", f"GTmod{scale}", "GTmod12"))
    lr_dir = _first_dir(directory, (f"LR_bicubic/X{scale}", f"LR_bicubic/x{scale}",
                                    f"LRbicx{scale}", f"LR/X{scale}", f"LR/x{scale}", "LR", "lr"))
    selfexsr = directory / f"image_SRF_{scale}"
    if hr_dir is None and selfexsr.is_dir():
        files = image_io.list_images(selfexsr)
        hr_files = [p for p in files if p.stem.endswith("_HR")]
        if regenerate_lr:
            pairs = pairs_from_hr_files(hr_files, scale, lr_cache_dir, [directory])
        else:
            lr_by_key = {pair_key(p.stem, scale): p for p in files if p.stem.endswith("_LR")}
            pairs = []
            for hp in hr_files:
                lp = lr_by_key.get(pair_key(hp.stem, scale))
                if lp is None:
                    raise FileNotFoundError(f"no LR image in {selfexsr} for HR {hp}")
                pairs.append(checked_pair(image_io.read_image(hp), image_io.read_image(lp),
                                           scale, str(hp), str(lp)))
    else:
        hr_dir = hr_dir or directory
        if lr_dir is None or regenerate_lr:
            pairs = pairs_from_hr_files(image_io.list_images(hr_dir), scale, lr_cache_dir,
                                         [directory])
        else:
            pairs = pairs_from_folders(hr_dir, lr_dir, scale)
    names = benchmark_names(directory)
    return [{"name": names.get(Path(p.origin).name, re.sub(r"_HR$", "", p.name)),
             "lr": p.lr, "hr": p.hr} for p in pairs]
