"""What a configuration may say and how a config file is read, in one place: the allowed values
of every enum field, and the reader of a config file given as `path.py[:variant]`.

`training.config_checks.validate_config` is the one check of these values (it runs before any
compute); the code that branches on a field imports its tuple from here rather than restating it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import ml_collections

MODEL_DTYPES = ("float32", "bfloat16")  # config.model.dtype
ADMM_METHODS = ("admm", "regularizer")  # config.admm.method
CONSTRAINED_BANDS = ("low", "high")  # config.admm.constrained_band
LOWPASS_KINDS = ("haar", "gaussian")  # config.admm.lowpass
STAGE_ORDERS = ("objective_first", "perceptual_first")  # config.admm.order
VGG_INPUT_SCALINGS = ("as_weights", "reference")  # config.loss.vgg_input_scaling
INPUT_SOURCES = ("tfds", "folder", "paired", "skimage")  # config.input.source
PHASES = ("pretrain", "admm")  # config.train.phases (a non-empty subset, in order)

# Every enum field of a config and its allowed values: the one table both checks read.
ENUM_FIELDS = (("model.dtype", MODEL_DTYPES), ("admm.method", ADMM_METHODS),
               ("admm.lowpass", LOWPASS_KINDS), ("admm.constrained_band", CONSTRAINED_BANDS),
               ("admm.order", STAGE_ORDERS))


def enum_problems(config: ml_collections.ConfigDict) -> list[str]:
    """One line per enum field of ENUM_FIELDS whose value is not allowed."""
    problems = []
    for field, allowed in ENUM_FIELDS:
        group, name = field.split(".")
        if config[group][name] not in allowed:
            problems.append(f"config.{field}={config[group][name]!r}: expected one of {allowed}")
    return problems


def load_config_file(spec: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config(variant)` of a config file named `path.py` or `path.py:variant`.

    The convention of ml_collections' config_flags (what `main --config` reads), for the programs
    that take a config file without absl flags. FileNotFoundError when the file is absent.
    """
    file, _, variant = str(spec).partition(":")
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    module_spec = importlib.util.spec_from_file_location(f"_lfcsr_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant) if variant else module.get_config()
