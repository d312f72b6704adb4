"""The GPU runtime settings: appended to the user's XLA_FLAGS, never overriding a flag the user
set, switchable off, and harmless to a CPU backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lfcsr_jax import runtime

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMAND_BUFFERS = "xla_gpu_enable_command_buffer"


def test_defaults_are_appended_after_the_users_flags():
    user = "--xla_force_host_platform_device_count=4"
    composed = runtime.compose_xla_flags(user)
    assert composed.split()[0] == user
    assert runtime.COMMAND_BUFFER_FLAG in composed.split()


def test_a_flag_the_user_set_is_never_overridden():
    user = f"--{COMMAND_BUFFERS}=FUSION"
    composed = runtime.compose_xla_flags(user)
    assert composed == user  # the user's value only, no second copy with ours


def test_configure_is_idempotent_and_can_be_switched_off():
    environ = {"XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    once = runtime.configure(environ)
    twice = runtime.configure(environ)
    assert once == twice and once.count(COMMAND_BUFFERS) == 1
    assert runtime.configure({"XLA_FLAGS": "", runtime.SWITCH: "0"}) == ""
    off = {runtime.SWITCH: "off"}
    runtime.configure(off)
    assert "XLA_FLAGS" not in off


def test_flag_name():
    assert runtime.flag_name("--xla_gpu_enable_command_buffer=A,B") == COMMAND_BUFFERS
    assert runtime.flag_name("--xla_cpu_flag") == "xla_cpu_flag"


def _cpu_computes_under(flag_set: str | None, expected_flag: str) -> None:
    """A fresh process applies the flag set, starts a CPU backend and computes 2 * sum(0..3)."""
    code = ("from lfcsr_jax import runtime; runtime.configure(); import os, jax, jax.numpy as jnp;"
            f"assert {expected_flag!r} in os.environ['XLA_FLAGS'];"
            "print(float(jax.jit(lambda x: (x * 2).sum())(jnp.arange(4.0))))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", runtime.SWITCH)}
    env["JAX_PLATFORMS"] = "cpu"
    if flag_set is not None:
        env[runtime.SWITCH] = flag_set
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "12.0"


def test_a_cpu_backend_starts_and_computes_with_the_flags():
    _cpu_computes_under(None, "command_buffer")


def test_flag_sets_are_chosen_by_name_and_an_unknown_name_is_refused():
    assert runtime.flag_set({}) == runtime.GPU_FLAGS
    assert runtime.flag_set({runtime.SWITCH: "1"}) == runtime.GPU_FLAGS
    assert runtime.flag_set({runtime.SWITCH: "capture"}) == runtime.CAPTURE_FLAGS
    assert runtime.flag_set({runtime.SWITCH: "off"}) == ()
    environ = {runtime.SWITCH: "capture"}
    flags = runtime.configure(environ).split()
    assert "--xla_gpu_command_buffer_unroll_loops=true" in flags
    assert any(f.startswith(f"--{COMMAND_BUFFERS}=+") and "CONVOLUTION" in f for f in flags)
    try:
        runtime.flag_set({runtime.SWITCH: "fast"})
    except ValueError as error:
        assert runtime.SWITCH in str(error) and "capture" in str(error)
    else:
        raise AssertionError("an unknown flag set was accepted")


def test_a_cpu_backend_starts_and_computes_with_the_capture_flags():
    _cpu_computes_under("capture", "unroll_loops")
