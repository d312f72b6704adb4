"""Orbax checkpoints: the training state (resume) and the generator export (evaluation).

Export layout (what `evaluate`, `super_resolve` and `convert pdasr` read and write):
  EXPORT_DIR/config.json   {"model": <model config dict>, "format": "lfcsr_jax.export/1", ...}
  EXPORT_DIR/params/       an Orbax StandardCheckpointer tree {"objective": ..., "perceptual": ...}
Writes go to a temporary sibling first and are renamed into place, so a crash never leaves a
half-written export behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

EXPORT_FORMAT = "lfcsr_jax.export/1"
GENERATOR_KEYS = ("objective", "perceptual")


class CheckpointError(ValueError):
    """A checkpoint or export that cannot be used, with the path and the reason."""


def _check_generator_tree(params: dict[str, Any], where: str) -> None:
    missing = [k for k in GENERATOR_KEYS if k not in params]
    extra = [k for k in params if k not in GENERATOR_KEYS]
    if missing or extra:
        raise CheckpointError(
            f"{where}: generator params must have exactly the keys {GENERATOR_KEYS}; "
            f"missing {missing}, unexpected {extra}"
        )


def save_export(
    directory: str | os.PathLike,
    generator_params: dict[str, Any],
    model_config: dict[str, Any],
    extra_info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes generator params + model config atomically; returns the export directory."""
    target = Path(directory).absolute()
    _check_generator_tree(generator_params, str(target))
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target}: already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        host_params = jax.tree_util.tree_map(np.asarray, generator_params)
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(staging / "params", host_params)
        checkpointer.wait_until_finished()
        info = {"format": EXPORT_FORMAT, "model": _jsonable(model_config)}
        info.update(extra_info or {})
        (staging / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_export(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads an export: returns (model config dict, generator params as numpy arrays)."""
    source = Path(directory).absolute()
    config_file = source / "config.json"
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such export directory")
    if not config_file.is_file():
        raise CheckpointError(f"{source}: not an lfcsr_jax export (no config.json)")
    info = json.loads(config_file.read_text())
    if info.get("format") != EXPORT_FORMAT:
        raise CheckpointError(
            f"{config_file}: format {info.get('format')!r}, expected {EXPORT_FORMAT!r}"
        )
    if not (source / "params").is_dir():
        raise CheckpointError(f"{source}: export has no params/ directory")
    params = ocp.StandardCheckpointer().restore(source / "params")
    _check_generator_tree(params, str(source))
    return info["model"], params


def _jsonable(value: Any) -> Any:
    """ConfigDicts, tuples and numpy scalars as plain JSON values."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
