"""Orbax checkpoints: the training state (resume) and the generator export (evaluation).

Export layout (what `evaluate`, `super_resolve` and `convert pdasr` read and write):
  EXPORT_DIR/config.json   {"model": <model config dict>, "format": "lfcsr_jax.export/1", ...}
  EXPORT_DIR/params/       an Orbax StandardCheckpointer tree {"objective": ..., "perceptual": ...}
On a local disk, writes go to a temporary sibling (`.<name>.tmp-*`) first and are renamed into
place, so a crash never leaves a half-written export behind; a sibling left by a killed export is
removed by the next export to the same place. On gs:// a folder cannot be renamed (docs/design.md,
section 14): the export is written in place, config.json last, and config.json is removed first
when an export is replaced, so a reader that finds config.json finds a complete export. A corrupt export (unreadable config.json, truncated or random
params/) raises CheckpointError naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lfcsr_jax import paths
from lfcsr_jax.cli_errors import UserError
from lfcsr_jax.paths import Path

EXPORT_FORMAT = "lfcsr_jax.export/1"
GENERATOR_KEYS = ("objective", "perceptual")


class CheckpointError(UserError):
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
    target = paths.location(directory)
    _check_generator_tree(generator_params, str(target))
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target}: already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    host_params = jax.tree_util.tree_map(np.asarray, generator_params)
    info = {"format": EXPORT_FORMAT, "model": _jsonable(model_config)}
    info.update(extra_info or {})
    if paths.is_remote(target):
        _save_export_in_place(target, host_params, info)
        return target
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=os.fspath(target.parent)))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; an export is an ordinary folder
        checkpointer = _this_process_only_checkpointer()
        checkpointer.save(staging / "params", host_params)
        checkpointer.wait_until_finished()
        (staging / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _save_export_in_place(target: Path, host_params: Any, info: dict[str, Any]) -> None:
    """The object-store export: config.json is the completion marker, removed first and written
    last, because a GCS "rename" of a folder is a copy of each object and is not atomic."""
    marker = target / "config.json"
    if marker.exists():
        marker.unlink()
    paths.remove_tree(target)
    checkpointer = _this_process_only_checkpointer()
    checkpointer.save(target / "params", host_params)
    checkpointer.wait_until_finished()
    paths.write_text_atomic(marker, json.dumps(info, indent=2, sort_keys=True))


def load_export(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads an export: returns (model config dict, generator params as numpy arrays)."""
    source = paths.location(directory)
    config_file = source / "config.json"
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such export directory")
    if not config_file.is_file():
        raise CheckpointError(f"{source}: not an lfcsr_jax export (no config.json)")
    try:
        info = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file}: unreadable or not JSON ({e}); the export is "
                              "damaged: re-export or re-convert the model") from e
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise CheckpointError(
            f"{config_file}: format {found!r}, expected {EXPORT_FORMAT!r}"
        )
    if not isinstance(info.get("model"), dict):
        raise CheckpointError(f"{config_file}: no 'model' config object; re-export the model")
    params_dir = source / "params"
    if not params_dir.is_dir():
        raise CheckpointError(f"{source}: export has no params/ directory")
    metadata = params_dir / "_METADATA"
    if metadata.is_file():
        try:
            json.loads(metadata.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{metadata}: unreadable or not JSON ({e}); the export is "
                                  "damaged: re-export or re-convert the model") from e
    _silence_closed_event_loop_reports()
    try:
        params = _this_process_only_checkpointer().restore(params_dir)
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files
        first = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{params_dir}: cannot read the parameters ({type(e).__name__}: "
                              f"{first}); the export is truncated or damaged: re-export or "
                              "re-convert the model") from e
    if not isinstance(params, dict):
        raise CheckpointError(f"{params_dir}: expected a tree of parameters, got "
                              f"{type(params).__name__}")
    _check_generator_tree(params, str(source))
    return info["model"], params


def _silence_closed_event_loop_reports() -> None:
    """Installed before every export restore. When the params are damaged, TensorStore still
    completes the reads it had queued after Orbax has failed and closed its asyncio loop; each
    one prints a 'RuntimeError: Event loop is closed' traceback through sys.excepthook (about
    150 lines for a random-data export), burying the one-line error. Drop exactly those
    reports; every other exception is printed as before."""
    previous = sys.excepthook
    if getattr(previous, "_drops_closed_event_loop", False):
        return

    def hook(kind, value, traceback):
        if kind is RuntimeError and str(value) == "Event loop is closed":
            return
        previous(kind, value, traceback)

    hook._drops_closed_event_loop = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    # The same reports also arrive from TensorStore's callback threads and as "unraisable"
    # exceptions of finalisers; filter those channels the same way.
    previous_thread_hook = threading.excepthook

    def thread_hook(args):
        if args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed":
            return
        previous_thread_hook(args)

    threading.excepthook = thread_hook
    previous_unraisable = sys.unraisablehook

    def unraisable_hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous_unraisable(unraisable)

    sys.unraisablehook = unraisable_hook


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_staging(target: Path) -> None:
    """Removes `.<name>.tmp-*` siblings: staging folders of exports that were killed mid-write."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _this_process_only_checkpointer() -> ocp.StandardCheckpointer:
    """Exports are host-local numpy trees: one process reads or writes them, with no barrier."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


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


# --------------------------------------------------------------------------------------------
# Training checkpoints: the whole TrainState plus a small JSON record (phase, data position).


class TrainCheckpoints:
    """Last-K checkpoints of the training state, plus the best ones by validation metrics.

    Layout under `directory`: `latest/<step>/` (the last `keep` saves), and for each tracked
    metric `best_<metric>/<step>/` holding only the best save so far. Each save is an Orbax
    Composite of `state` (StandardSave) and `record` (JSON: step, phase, data position, metrics).
    Orbax writes into a temporary folder and renames it when complete, so a preempted save
    never shadows the last good checkpoint.
    """

    def __init__(self, directory: str | os.PathLike, keep: int,
                 best_metrics: dict[str, str] | None = None):
        self.directory = paths.location(directory)
        self._latest = ocp.CheckpointManager(
            self.directory / "latest",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True,
                multiprocessing_options=_barrier_prefix("latest")),
        )
        # metric name -> 'max' or 'min'.
        self._best: dict[str, ocp.CheckpointManager] = {}
        for metric, mode in (best_metrics or {}).items():
            self._best[metric] = ocp.CheckpointManager(
                self.directory / f"best_{metric}",
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, create=True, best_fn=_metric_getter(metric),
                    best_mode=mode, enable_async_checkpointing=True,
                    multiprocessing_options=_barrier_prefix(f"best_{metric}")),
            )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(self, step: int, state: Any, record: dict[str, Any], force: bool = False) -> None:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  record=ocp.args.JsonSave(_jsonable(record)))
        self._latest.save(step, args=args, force=force)

    def save_best(self, step: int, state: Any, record: dict[str, Any],
                  metrics: dict[str, float]) -> None:
        """Offers the state to every best-by-metric manager that tracks a metric present here."""
        for metric, manager in self._best.items():
            if metric in metrics and np.isfinite(metrics[metric]):
                args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          record=ocp.args.JsonSave(_jsonable(record)))
                manager.save(step, args=args, metrics={metric: float(metrics[metric])},
                             force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """(state, record) of the newest complete save, or None when there is none."""
        step = self._latest.latest_step()
        if step is None:
            return None
        restored = self._latest.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          record=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["record"])

    def wait_until_finished(self) -> None:
        self._latest.wait_until_finished()
        for manager in self._best.values():
            manager.wait_until_finished()

    def close(self) -> None:
        self.wait_until_finished()
        self._latest.close()
        for manager in self._best.values():
            manager.close()


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    # Several managers save the same step; on several hosts their barriers need distinct names.
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _metric_getter(metric: str):
    def get(metrics: dict[str, float]) -> float:
        return metrics[metric]

    return get
