"""Stopping a run cleanly on SIGTERM/SIGINT: at the same step on every host (docs/design.md,
section 14), or at once when the signal arrives during a compile."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from lfcsr_jax.errors import UserError, one_line


class StopRequest:
    """Set by SIGTERM/SIGINT (a TPU VM preemption or Ctrl-C); checked between steps.

    One process: a Python handler records the signal and the loop saves and stops before the next
    step. Several processes (a TPU pod slice): every host must stop at the same step, or the ones
    that go on hang in collectives. There JAX's preemption service owns SIGTERM (its notifier is
    installed by `jax.distributed.initialize`): a notice on any host starts an agreement in the
    coordination service, and `multihost_utils.reached_preemption_sync_point(step)` turns True on
    every host at the same step, with no collective per step. SIGINT (Ctrl-C) is forwarded to
    that notifier as a SIGTERM to this process. Without the service (jax_enable_preemption_service
    off), the hosts fall back to an allgather of their local flags each step.

    A signal that arrives while a train step compiles (tens of seconds at the start and at the
    phase switch, during which Python signal handlers cannot run) ends the process at once
    through a watcher thread woken by `signal.set_wakeup_fd`: compiling first and then saving
    would overrun a preemption notice, and the last checkpoint still stands (any save in flight
    is awaited before each compile, see `guard_compiles`). Not under the preemption service: there
    every host stops together at the first sync point after the compile.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._compiling = False
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup = -1
        self._sync_point = False  # JAX's preemption service decides when every host stops

    def install(self) -> None:
        self._sync_point = preemption_service_running()
        handled = (signal.SIGINT,) if self._sync_point else (signal.SIGTERM, signal.SIGINT)
        for sig in handled:
            self._previous[sig] = signal.signal(sig, self._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._wakeup = (read_fd, write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                         name="stop-during-compile").start()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._wakeup[1])  # the watcher reads EOF and ends
            self._wakeup = None

    def _watch(self, read_fd: int) -> None:
        try:
            while True:
                received = os.read(read_fd, 1)
                if not received:
                    return
                # Under the preemption service one host must not leave alone: the others would
                # wait for it in collectives. They all stop at the next sync point instead.
                if (self._compiling and not self._sync_point
                        and received[0] in (signal.SIGTERM, signal.SIGINT)):
                    name = signal.Signals(received[0]).name
                    print(f"Stopped by {name} while a train step was compiling: exiting without "
                          "a new checkpoint (the last one stands). Rerun the same command to "
                          "resume.", flush=True)
                    os._exit(0)
        finally:
            os.close(read_fd)

    def guard_compiles(self, steps: dict[str, Callable],
                       before_compile: Callable[[], None]) -> dict[str, Callable]:
        """The steps, each marking its first call (trace + compile) as a compile window."""

        def guarded(name: str, fn: Callable) -> Callable:
            compiled = False

            def call(*args):
                nonlocal compiled
                if compiled:
                    return fn(*args)
                before_compile()  # no save in flight while an exit is possible
                logging.info("Compiling the %s step (a stop signal now exits at once, keeping "
                             "the last checkpoint)", name)
                self._compiling = True
                try:
                    out = fn(*args)
                except jax.errors.JaxRuntimeError as error:
                    raise_if_out_of_memory(name, error)
                    raise
                finally:
                    self._compiling = False
                compiled = True
                return out

            return call

        return {name: guarded(name, fn) for name, fn in steps.items()}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal API)
        self.signal_name = signal.Signals(signum).name
        if self._sync_point:  # hand Ctrl-C to the preemption service, which tells every host
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        """Whether to save and stop before `step`; True at the same step on every host."""
        if jax.process_count() == 1:
            return self.signal_name is not None
        from jax.experimental import multihost_utils

        if self._sync_point:
            if not multihost_utils.reached_preemption_sync_point(step):
                return False
            self.signal_name = self.signal_name or "a preemption notice (SIGTERM on some host)"
            return True
        # Every host must agree, or the ones that stop would hang the others' collectives.
        local = np.array(self.signal_name is not None)
        return bool(np.any(multihost_utils.process_allgather(local)))


def preemption_service_running() -> bool:
    """True in a multi-process run whose JAX preemption sync manager is up."""
    if jax.process_count() == 1:
        return False
    try:
        from jax._src import distributed  # the manager has no public accessor
    except ImportError:
        return False
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


def raise_if_out_of_memory(step: str, error: Exception) -> None:
    """A step that does not fit in accelerator memory fails its first call (the compile, on a
    TPU) with RESOURCE_EXHAUSTED and a long trace: one line instead, with what to change. The
    fits per slice are measured without the accelerator (tools/PERF_NOTES.md, README)."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text:
        return
    first = one_line(text.split("\n", 1)[0])[:300]
    raise UserError(
        f"the {step} step does not fit in accelerator memory ({first}); set "
        "--config.model.remat=True (one v5e chip needs it at batch 16), use more chips "
        "(train.global_batch_size is split over them) or a smaller batch; "
        "`python tools/benchmark.py --aot=tpu:<topology>` measures the fit without a TPU") from error
