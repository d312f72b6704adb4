"""Accelerator runtime settings every entry point applies before the JAX backend starts.

The training step is a chain of thousands of small kernels (docs/design.md section 13): on a GPU
the launches, not the arithmetic, set its time. XLA records sequences of kernels into CUDA graphs
("command buffers") and replays each with one launch. What it may record is a list of command
types (`--xla_gpu_enable_command_buffer`); a thunk of a type not on the list ends the graph and is
launched from the host, and a while loop is recorded only when its whole body is.

`LFCSR_RUNTIME_FLAGS` picks a set:
- `graphs` (the default, also `1`): fusions, cuBLAS, cuDNN fused graphs, custom calls, loops and
  conditionals. Convolutions are NOT on this list (XLA has a separate CONVOLUTION type), so every
  convolution ends a graph: compiled for an H200, the bf16 batch-16 ADMM step keeps 172
  convolutions and 588 thunks outside graphs, 306 top-level thunks (tools/PERF_NOTES.md). It took
  the step from 173 to 110 ms on an H200 against no flags.
- `capture`: XLA's default list plus loops, conditionals and convolutions, and loops unrolled into
  the graph (needs a CUDA >= 12.9 runtime): the whole ADMM step, the pre-training step and the
  inference forward are each one command buffer with nothing launched outside it (measured by
  `tools/benchmark.py --aot=h200`). Opt-in until a GPU run shows the same numbers with and
  without it (convolution capture has had correctness bugs in XLA): `tools/gpu_compare.sh`.
- `0` / `off`: leave XLA_FLAGS as the user set it.

The flags are appended to the user's XLA_FLAGS; a flag the user already set is never overridden.
They are GPU options: CPU and TPU backends parse and ignore them.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping, Sequence

COMMAND_BUFFER_FLAG = (
    "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
)
GPU_FLAGS: tuple[str, ...] = (COMMAND_BUFFER_FLAG,)
# '+' edits XLA's default list (which keeps DYNAMIC_SLICE_FUSION, dropped by the list above).
CAPTURE_FLAGS: tuple[str, ...] = (
    "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL,+CONVOLUTION",
    "--xla_gpu_command_buffer_unroll_loops=true",
)
FLAG_SETS: dict[str, tuple[str, ...]] = {"graphs": GPU_FLAGS, "capture": CAPTURE_FLAGS}
SWITCH = "LFCSR_RUNTIME_FLAGS"  # a FLAG_SETS name, "1" (= graphs), or "0"/"off"/"false"/"no"
_OFF = ("0", "false", "off", "no")
_DEFAULT = ("", "1", "true", "on", "yes")


def flag_name(flag: str) -> str:
    """'--xla_foo=1' -> 'xla_foo' (the key XLA parses)."""
    return flag.lstrip("-").split("=", 1)[0]


def compose_xla_flags(user_flags: str, defaults: Sequence[str] = GPU_FLAGS) -> str:
    """The user's XLA_FLAGS followed by each default the user did not set themselves."""
    user_names = {flag_name(flag) for flag in user_flags.split()}
    added = [flag for flag in defaults if flag_name(flag) not in user_names]
    return " ".join([user_flags.strip(), *added]).strip()


def flag_set(environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """The flags `LFCSR_RUNTIME_FLAGS` selects; an unknown value is an error naming it."""
    value = environ.get(SWITCH, "").strip().lower()
    if value in _OFF:
        return ()
    if value in _DEFAULT:
        return GPU_FLAGS
    if value not in FLAG_SETS:
        raise ValueError(f"{SWITCH}={value!r}: expected one of {sorted(FLAG_SETS)}, 1 or 0")
    return FLAG_SETS[value]


def configure(environ: MutableMapping[str, str] = os.environ) -> str:
    """Sets XLA_FLAGS in `environ` (before the backend starts) and returns its value."""
    flags = flag_set(environ)
    if flags:
        environ["XLA_FLAGS"] = compose_xla_flags(environ.get("XLA_FLAGS", ""), flags)
    return environ.get("XLA_FLAGS", "")
