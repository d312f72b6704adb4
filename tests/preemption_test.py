"""StopRequest.guard_compiles: a step's first call is a compile window, and a step that does not
fit in accelerator memory ends in one line that says what to change."""

from __future__ import annotations

import jax
import pytest

from lfcsr_jax.errors import UserError
from lfcsr_jax.training.preemption import StopRequest

OOM = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space "
       "hbm. Used 18.27G of 15.75G hbm. Exceeded hbm capacity by 2.52G.\n\nTotal hbm usage ...")


def _guarded(fn):
    calls = []
    steps = StopRequest().guard_compiles({"admm": fn}, lambda: calls.append("before"))
    return steps["admm"], calls


def test_out_of_memory_at_the_first_call_is_one_line_naming_the_fix():
    def step(*_):
        raise jax.errors.JaxRuntimeError(OOM)

    guarded, calls = _guarded(step)
    with pytest.raises(UserError) as raised:
        guarded(1)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("the admm step does not fit in accelerator memory")
    assert "Used 18.27G of 15.75G hbm" in message
    assert "--config.model.remat=True" in message and "--aot=tpu:" in message
    assert calls == ["before"]


def test_other_runtime_errors_pass_through_unchanged():
    error = jax.errors.JaxRuntimeError("INTERNAL: something else")

    def step(*_):
        raise error

    guarded, _ = _guarded(step)
    with pytest.raises(jax.errors.JaxRuntimeError) as raised:
        guarded(1)
    assert raised.value is error


def test_later_calls_skip_the_compile_window():
    guarded, calls = _guarded(lambda x: x + 1)
    assert guarded(1) == 2 and guarded(2) == 3
    assert calls == ["before"]
