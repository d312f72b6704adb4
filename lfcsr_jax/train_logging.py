"""Training logs: clu TensorBoard scalars and images, console progress, and metrics.jsonl.

Only process 0 writes files; the others log to the console through absl at most.
"""

from __future__ import annotations

import json
import math
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


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl, for scripts and tests."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
