"""Training logs: clu TensorBoard scalars and images, console progress, and metrics.jsonl.

Only process 0 writes files; the others log to the console through absl at most.
On resume, `truncate_metrics` first cuts metrics.jsonl back to the checkpoint's step, so its steps
never repeat or go backwards, and a validation already recorded for a step is not recorded twice.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers, periodic_actions


class MetricsWriter:
    """One place that turns step metrics into TensorBoard, JSON lines and console progress."""

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict, total_steps: int):
        self.is_writer = jax.process_index() == 0
        self.log_every = config.train.log_every_steps
        self.writer = metric_writers.create_default_writer(
            str(workdir), just_logging=not self.is_writer, asynchronous=False)
        self.jsonl_path = workdir / "metrics.jsonl"
        # Steps whose validation is already in the file (a resume at the last step validates
        # again; its record is not repeated).
        self._validated_steps = {row["step"] for row in _read_rows(self.jsonl_path)
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
            with self.jsonl_path.open("a") as handle:
                handle.write(json.dumps(row, sort_keys=True) + "\n")

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


def _read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a last line cut short by a kill is dropped, not an error."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(workdir: str | Path, step: int) -> int:
    """Drops the rows of metrics.jsonl past `step` (the step training resumes from; 0 for a fresh
    start); returns how many were dropped. Process 0 only.

    A run killed after its last checkpoint has logged steps that the resumed run logs again;
    without this the steps in the file repeat and go backwards. The file is rewritten to a
    temporary file and renamed over the old one, so a kill during the cut leaves either version.
    """
    path = Path(workdir) / "metrics.jsonl"
    if jax.process_index() != 0 or not path.is_file():
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
    fd, tmp = tempfile.mkstemp(prefix=".metrics.jsonl.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("".join(line + "\n" for line in kept))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(lines) - len(kept)


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl, for scripts and tests."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
