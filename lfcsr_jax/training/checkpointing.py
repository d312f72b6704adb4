"""Orbax checkpoints of the training state (resume), verified against the array checksums that
weights/exports.py computes; the generator export that training ends with is in that module too.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from lfcsr_jax import paths
from lfcsr_jax.errors import one_line
from lfcsr_jax.paths import Path
from lfcsr_jax.weights.exports import (CheckpointError, DamagedCheckpoint, jsonable, short_reason,
                                       silence_closed_event_loop_reports, structure_mismatch,
                                       tree_checksums, verify_checksums)


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
        self._latest.save(step, args=_save_args(state, record), force=force)

    def save_best(self, step: int, state: Any, record: dict[str, Any],
                  metrics: dict[str, float]) -> None:
        """Offers the state to every best-by-metric manager that tracks a metric present here."""
        checksums = None  # hashed once, for all the managers that take this state
        for metric, manager in self._best.items():
            if metric in metrics and np.isfinite(metrics[metric]):
                checksums = checksums or tree_checksums(state)
                manager.save(step, args=_save_args(state, record, checksums),
                             metrics={metric: float(metrics[metric])}, force=True)

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict[str, Any]] | None:
        """(state, record) of the newest save that reads and verifies, or None when there is
        none. Newer saves that fail are reported in one line each and moved under `damaged/`
        (never deleted), so they are not tried again; when none verifies, nothing is moved and
        CheckpointError lists them."""
        failures: list[tuple[int, DamagedCheckpoint]] = []
        for step in sorted(self._latest.all_steps(), reverse=True):
            try:
                state, record = self._restore_verified(step, abstract_state)
            except DamagedCheckpoint as damage:
                failures.append((step, damage))
                continue
            for bad_step, damage in failures:
                self._set_aside(bad_step, damage)
            if failures:
                self._latest.reload()
            return state, record
        if failures:
            listed = "; ".join(f"step {step}: {one_line(d)}" for step, d in failures)
            raise CheckpointError(
                f"{self._latest.directory}: no checkpoint verifies ({listed}); nothing was moved: "
                "restore them from a copy, or move that folder aside to train from step 0")
        return None

    def _step_dir(self, step: int) -> Path:
        return paths.location(self._latest.directory) / str(step)

    def _restore_verified(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The save at `step`, checked against its checksums; DamagedCheckpoint if it cannot be
        read or does not match, CheckpointError if it is sound but of another state shape."""
        step_dir = self._step_dir(step)
        if not step_dir.is_dir() or not any(step_dir.iterdir()):
            raise DamagedCheckpoint("empty", f"{step_dir} is an empty folder")
        recorded = None
        if not (step_dir / "checksums").exists() and _lists_checksums(step_dir):
            raise DamagedCheckpoint("checksums", f"{step_dir}/checksums: missing, though the "
                                    "step's metadata lists it")
        if (step_dir / "checksums").exists():
            recorded = self._read_checksums(step, step_dir)
            mismatch = structure_mismatch(recorded, abstract_state)
            if mismatch:
                raise CheckpointError(
                    f"{step_dir}: holds a training state of another shape ({mismatch}); it was "
                    "written by another config: use that config, or another --workdir")
        silence_closed_event_loop_reports()
        try:
            restored = self._latest.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax/TensorStore raise many types for damaged files
            raise DamagedCheckpoint("unreadable", f"{step_dir}: cannot be read "
                                    f"({type(e).__name__}: {short_reason(e)})") from e
        record = restored["record"]
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise DamagedCheckpoint("record", f"{step_dir}/record: no integer 'step'")
        if recorded is None:
            logging.warning("%s: written before checkpoints carried checksums; restored "
                            "unverified", step_dir)
        else:
            problem = verify_checksums(restored["state"], recorded)
            if problem:
                raise DamagedCheckpoint("checksum", f"{step_dir}: {problem}")
        return restored["state"], dict(record)

    def _read_checksums(self, step: int, step_dir: Path) -> dict[str, Any]:
        try:
            recorded = self._latest.restore(
                step, args=ocp.args.Composite(checksums=ocp.args.JsonRestore()))["checksums"]
        except Exception as e:  # a truncated or missing JSON file
            raise DamagedCheckpoint("checksums", f"{step_dir}/checksums: unreadable "
                                    f"({type(e).__name__}: {short_reason(e)})") from e
        if (not isinstance(recorded, dict) or not isinstance(recorded.get("leaves"), dict)
                or not all(isinstance(v, dict) and {"dtype", "shape"} <= set(v)
                           for v in recorded["leaves"].values())):
            raise DamagedCheckpoint("checksums", f"{step_dir}/checksums: not a checksum record")
        return recorded

    def _set_aside(self, step: int, damage: DamagedCheckpoint) -> None:
        """Moves a damaged save to damaged/latest-<step>-<reason> (a folder no manager scans)
        and says so in one line. One process moves it; the others wait for it."""
        source = self._step_dir(step)
        target = self.directory / "damaged" / f"latest-{step}-{damage.reason}"
        suffix = 1
        while target.exists():
            suffix += 1
            target = self.directory / "damaged" / f"latest-{step}-{damage.reason}-{suffix}"
        moved = ""
        if jax.process_index() == 0:
            try:
                paths.move_tree(source, target)
                moved = f"moved to {target}"
            except Exception as e:  # noqa: BLE001 (reported; the next run tries it again)
                moved = f"could not be moved aside ({type(e).__name__}: {one_line(e)[:100]})"
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

            multihost_utils.sync_global_devices(f"lfcsr_set_aside_{step}")
        logging.warning("%s", one_line(f"checkpoint step {step} is damaged ({damage}); "
                                       f"{moved or 'moved aside by process 0'}; resuming from "
                                       "an older one"))

    def wait_until_finished(self) -> None:
        self._latest.wait_until_finished()
        for manager in self._best.values():
            manager.wait_until_finished()

    def close(self) -> None:
        self.wait_until_finished()
        self._latest.close()
        for manager in self._best.values():
            manager.close()


def _lists_checksums(step_dir: Path) -> bool:
    """Whether Orbax's step metadata names a `checksums` item: the step was saved with one, so
    its absence is damage, not an old checkpoint."""
    try:
        metadata = json.loads((step_dir / "_CHECKPOINT_METADATA").read_text())
        return "checksums" in metadata.get("item_handlers", {})
    except Exception:  # noqa: BLE001 (unreadable metadata: the restore itself will report it)
        return False


def _save_args(state: Any, record: dict[str, Any],
               checksums: dict[str, Any] | None = None) -> ocp.args.Composite:
    """The state, its record and the state's checksums: one Orbax step, committed together."""
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              record=ocp.args.JsonSave(jsonable(record)),
                              checksums=ocp.args.JsonSave(checksums or tree_checksums(state)))


def _barrier_prefix(name: str) -> ocp.options.MultiprocessingOptions:
    # Several managers save the same step; on several hosts their barriers need distinct names.
    return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


def _metric_getter(metric: str):
    def get(metrics: dict[str, float]) -> float:
        return metrics[metric]

    return get
