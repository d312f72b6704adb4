"""The training loop as an object: steps, data, logging and periodic actions in one typed holder.

The loop keeps the device busy: it dispatches step n+1 before it fetches step n's metrics (one
step late), and every periodic action (samples, validation, checkpoints) is a hook that runs
between dispatches. `tools/benchmark.py --loop` runs this same loop with a synthetic stream and an
in-memory writer, so the loop's overhead over the bare step is measured, not guessed.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator, Protocol

import jax
import numpy as np
from jax.sharding import NamedSharding

from lfcsr_jax.training.steps import Step
from lfcsr_jax.training.train_state import TrainState

Metrics = dict[str, jax.Array]
Pending = tuple[int, str, Metrics]  # (step, phase, metrics not yet fetched from the device)


class StepWriter(Protocol):
    """What the loop needs of a metrics writer (train_logging.MetricsWriter is the real one)."""

    def add_input_wait(self, seconds: float) -> None: ...

    def write_step_metrics(self, step: int, phase: str, metrics: Metrics) -> bool: ...

    def flush_pending(self, pending: Pending | None) -> None: ...


class StopSignal(Protocol):
    signal_name: str | None

    def requested(self, step: int) -> bool:
        """Called once per step, with the same step on every host (see preemption.StopRequest)."""
        ...


class Checkpointer(Protocol):
    directory: Any

    def latest_step(self) -> int | None: ...

    def save(self, step: int, state: Any, record: dict[str, Any], force: bool = False) -> None: ...

    def save_best(self, step: int, state: Any, record: dict[str, Any],
                  metrics: dict[str, float]) -> None: ...

    def wait_until_finished(self) -> None: ...


class Hook(Protocol):
    """A periodic action, run after step `step` (1-based count of finished steps) is dispatched."""

    def __call__(self, loop: "TrainLoop", step: int, state: TrainState,
                 local_batch: dict[str, np.ndarray]) -> int | None:
        """Returns an exit code to stop the loop, or None to go on."""


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    """This process's rows of the global batch -> one global array per field, split on `data`."""
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in local_batch.items()}


def phase_at(step: int, lengths: dict[str, int]) -> tuple[str | None, int]:
    """(phase, step within the phase) for a global step; (None, 0) once every phase is done."""
    start = 0
    for phase, length in lengths.items():
        if step < start + length:
            return phase, step - start
        start += length
    return None, 0


def step_record(step: int, lengths: dict[str, int],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON record saved beside a checkpoint: where the run and its data stream stand."""
    phase, _ = phase_at(step, lengths)
    record = {"step": step, "phase": phase or "done", "data_position": step}
    record.update(extra or {})
    return record


NON_FINITE_EXIT = 3


@dataclasses.dataclass
class TrainLoop:
    """Everything the loop touches. `checkpoints` may be None (benchmarks): nothing is saved."""

    steps: dict[str, Step]
    lengths: dict[str, int]  # phase -> steps, in order
    vgg_params: Any
    batch_sharding: NamedSharding
    stream: Iterator[dict[str, np.ndarray]]
    writer: StepWriter
    stop: StopSignal
    checkpoints: Checkpointer | None = None
    hooks: list[Hook] = dataclasses.field(default_factory=list)
    pending: Pending | None = None  # the last step's metrics, fetched one step late
    last_validation: dict[str, float] = dataclasses.field(default_factory=dict)
    state: TrainState | None = None
    step: int = 0

    @property
    def total_steps(self) -> int:
        return sum(self.lengths.values())

    def flush(self) -> int | None:
        """Fetches and writes the pending metrics; the (0-based) step whose metrics were not
        finite, or None when all is well."""
        pending, self.pending = self.pending, None
        if pending is None or self.writer.write_step_metrics(*pending):
            return None
        return pending[0]

    def stop_non_finite(self, step: int) -> int:
        """Reports the 0-based `step` as metrics.jsonl numbers it (steps done: step + 1)."""
        where = ""
        if self.checkpoints is not None:
            self.checkpoints.wait_until_finished()
            latest = self.checkpoints.latest_step()
            where = (f" The last good checkpoint (step {latest}) in {self.checkpoints.directory} "
                     "is intact." if latest is not None else
                     f" No checkpoint had been saved yet in {self.checkpoints.directory}.")
        print(f"Non-finite loss or input at step {step + 1}: the update was not applied and "
              f"training stopped.{where}", flush=True)
        return NON_FINITE_EXIT

    def _stop_on_request(self) -> int:
        self.writer.flush_pending(self.pending)
        self.pending = None
        if self.checkpoints is not None:
            if self.checkpoints.latest_step() != self.step:  # a periodic save may have just run
                self.checkpoints.save(self.step, self.state, step_record(self.step, self.lengths),
                                      force=True)
            self.checkpoints.wait_until_finished()
            print(f"Stopped by {self.stop.signal_name or 'a signal'} at step {self.step}; "
                  f"checkpoint saved in {self.checkpoints.directory}. Rerun the same command to "
                  "resume.", flush=True)
        return 0

    def run(self, state: TrainState, start_step: int) -> int:
        """Runs from `start_step` to the end of the last phase; returns the exit code.

        The final state and step stay in `self.state` / `self.step` for the caller."""
        self.state, self.step = state, start_step
        while self.step < self.total_steps:
            if self.stop.requested(self.step):
                return self._stop_on_request()
            phase, _ = phase_at(self.step, self.lengths)
            wait_start = time.perf_counter()
            local_batch = next(self.stream)
            batch = global_batch(local_batch, self.batch_sharding)
            self.writer.add_input_wait(time.perf_counter() - wait_start)
            self.state, metrics = self.steps[phase](self.state, batch, self.vgg_params)
            # Fetch the previous step's metrics only now: the device already has this step queued.
            bad_step = self.flush()
            if bad_step is not None:
                return self.stop_non_finite(bad_step)
            self.pending = (self.step, phase, metrics)
            self.step += 1
            for hook in self.hooks:
                exit_code = hook(self, self.step, self.state, local_batch)
                if exit_code is not None:
                    return exit_code
        bad_step = self.flush()
        if bad_step is not None:
            return self.stop_non_finite(bad_step)
        if self.checkpoints is not None:
            self.checkpoints.wait_until_finished()
        return 0


# ----------------------------------------------------------------------------- hooks
@dataclasses.dataclass
class SampleImages:
    """Writes LR / Y' / Y / HR crops of the current batch every `every` steps."""

    every: int
    validator: Any
    writer: Any

    def __call__(self, loop: TrainLoop, step: int, state: TrainState, local_batch) -> None:
        if step % self.every == 0:
            self.writer.write_samples(step, self.validator.sample_images(state, local_batch))


@dataclasses.dataclass
class Validate:
    """Scores both stages on the validation images every `every` steps and at the last step."""

    every: int
    validator: Any
    writer: Any

    def __call__(self, loop: TrainLoop, step: int, state: TrainState, local_batch) -> None:
        if step % self.every == 0 or step == loop.total_steps:
            loop.last_validation = self.validator.validate(state, step, self.writer)


@dataclasses.dataclass
class SaveCheckpoint:
    """Saves every `every` steps and at the last step (metrics written first, so a non-finite
    step never reaches a checkpoint); keeps the best validation checkpoint too."""

    every: int
    eval_every: int

    def __call__(self, loop: TrainLoop, step: int, state: TrainState, local_batch) -> int | None:
        if loop.checkpoints is None or not (step % self.every == 0 or step == loop.total_steps):
            return None
        bad_step = loop.flush()
        if bad_step is not None:
            return loop.stop_non_finite(bad_step)
        record = step_record(step, loop.lengths, loop.last_validation)
        loop.checkpoints.save(step, state, record)
        if loop.last_validation and step % self.eval_every == 0:
            loop.checkpoints.save_best(step, state, record, loop.last_validation)
        return None
