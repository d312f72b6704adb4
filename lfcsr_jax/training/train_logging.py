"""Training logs: clu TensorBoard scalars and images, console progress, and metrics.jsonl.

Only process 0 writes files; the others log to the console through absl at most.
On resume, `truncate_metrics` first cuts metrics.jsonl back to the checkpoint's step, so its steps
never repeat or go backwards, and a validation already recorded for a step is not recorded twice.
On a local disk metrics.jsonl is appended to; an object store (gs://) cannot append, so there the
writer keeps the lines in memory and uploads the whole file at each new row (it is small: one row
per `log_every_steps`). Truncation is the same read-filter-rewrite on both.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions

from lfcsr_jax import paths


class MetricsWriter:
    """One place that turns step metrics into TensorBoard, JSON lines and console progress."""

    def __init__(self, workdir: paths.PathLike, config: ml_collections.ConfigDict,
                 total_steps: int):
        self.is_writer = jax.process_index() == 0
        self.log_every = config.train.log_every_steps
        events_dir = tensorboard_dir(workdir, config)
        self.writer = metric_writers.create_default_writer(
            events_dir, just_logging=not self.is_writer or events_dir is None,
            asynchronous=False)
        self.jsonl = JsonLines(paths.location(workdir) / "metrics.jsonl")
        # Steps whose validation is already in the file (a resume at the last step validates
        # again; its record is not repeated).
        self._validated_steps = {row["step"] for row in self.jsonl.rows()
                                 if row.get("phase") == "validation"} if self.is_writer else set()
        self.report_progress = periodic_actions.ReportProgress(
            num_train_steps=total_steps, writer=self.writer, every_steps=self.log_every)
        self._input_wait = 0.0
        self._window_start = time.perf_counter()
        self._window_steps = 0
        if self.is_writer:
            flat = _flatten(json.loads(config.to_json_best_effort()))
            self.writer.write_hparams({k: v for k, v in flat.items()
                                       if isinstance(v, (int, float, str, bool))})

    def add_input_wait(self, seconds: float) -> None:
        self._input_wait += seconds

    def write_step_metrics(self, step: int, phase: str, metrics: Any) -> bool:
        """Writes one step's metrics (fetched now, one step late); False if they are not finite."""
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        finite = bool(values.get("all_finite", 1.0)) and all(
            math.isfinite(v) for k, v in values.items() if k != "all_finite")
        self._window_steps += 1
        self.report_progress(step + 1, time.time())
        if not finite or (step + 1) % self.log_every == 0:
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            values["steps_per_second"] = self._window_steps / elapsed
            values["input_wait_fraction"] = self._input_wait / elapsed
            self._window_start, self._window_steps, self._input_wait = time.perf_counter(), 0, 0.0
            self.writer.write_scalars(step + 1, values)
            self._append_jsonl({"step": step + 1, "phase": phase, **values})
        return finite

    def flush_pending(self, pending: tuple[int, str, Any] | None) -> None:
        if pending is not None:
            self.write_step_metrics(*pending)

    def write_validation(self, step: int, values: dict[str, float]) -> None:
        if step in self._validated_steps:
            return
        self._validated_steps.add(step)
        self.writer.write_scalars(step, {f"val/{k}": v for k, v in values.items()})
        self._append_jsonl({"step": step, "phase": "validation", **values})

    def write_samples(self, step: int, images: dict[str, np.ndarray]) -> None:
        """images: name -> (N, H, W, 3) uint8 grids (LR, Y', Y, HR crops)."""
        self.writer.write_images(step, images)

    def _append_jsonl(self, row: dict[str, Any]) -> None:
        if self.is_writer:
            self.jsonl.append(row)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            flat[name] = str(value)
        else:
            flat[name] = value
    return flat


def tensorboard_dir(workdir: paths.PathLike, config: ml_collections.ConfigDict) -> str | None:
    """Where TensorBoard event files go: `train.tensorboard_dir`, '' = the workdir, 'none' = no
    event files. They are written by TensorFlow's own file system layer (gs:// included)."""
    choice = config.train.get("tensorboard_dir", "")
    if choice == "none":
        return None
    return str(paths.location(choice or workdir))


class JsonLines:
    """metrics.jsonl: appended to on a local disk, rewritten whole on an object store."""

    def __init__(self, path: paths.Path):
        self.path = path
        self.remote = paths.is_remote(path)
        # Object stores: the file's text so far, uploaded whole with each new row.
        self._text = _read_text(path) if self.remote else ""

    def rows(self) -> list[dict[str, Any]]:
        return _parse_rows(_read_text(self.path))

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True) + "\n"
        if self.remote:
            self._text += line
            paths.write_text_atomic(self.path, self._text)
        else:
            with self.path.open("a") as handle:
                handle.write(line)


def _read_text(path: paths.Path) -> str:
    return path.read_text() if path.exists() else ""


def _parse_rows(text: str) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a last line cut short by a kill is dropped, not an error."""
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(workdir: paths.PathLike, step: int) -> int:
    """Drops the rows of metrics.jsonl past `step` (the step training resumes from; 0 for a fresh
    start); returns how many were dropped. Process 0 only.

    A run killed after its last checkpoint has logged steps that the resumed run logs again;
    without this the steps in the file repeat and go backwards. The file is replaced whole
    (paths.write_text_atomic), so a kill during the cut leaves either version.
    """
    path = paths.location(workdir) / "metrics.jsonl"
    if jax.process_index() != 0 or not path.exists():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
        if isinstance(row, dict) and int(row.get("step", 0)) <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    paths.write_text_atomic(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


def read_metrics(workdir: paths.PathLike) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl, for scripts and tests."""
    path = paths.location(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
