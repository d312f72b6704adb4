"""Accelerator runtime settings every entry point applies before the JAX backend starts.

The training step is a chain of thousands of small kernels (docs/design.md section 13):
on a GPU the launches, not the arithmetic, set its time. XLA can record the whole step, including
the scanned loops (WHILE) and conditionals, into CUDA graphs ("command buffers") and replay them
with one launch each. That one setting took the bf16 PD-ADMM step on an H200 from 173 to 110 ms
with no code change (tools/PERF_NOTES.md).

The flags are appended to the user's XLA_FLAGS; a flag the user already set is never overridden.
`LFCSR_RUNTIME_FLAGS=0` switches the whole module off. The flags are GPU options: CPU and TPU
backends parse and ignore them.
"""

from __future__ import annotations

import os
from typing import Mapping, MutableMapping, Sequence

# Kernel kinds XLA may capture into CUDA graphs: everything the step launches, loops included.
COMMAND_BUFFER_FLAG = (
    "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
)
GPU_FLAGS: tuple[str, ...] = (COMMAND_BUFFER_FLAG,)
SWITCH = "LFCSR_RUNTIME_FLAGS"  # "0" / "false" / "off": leave XLA_FLAGS as the user set it


def flag_name(flag: str) -> str:
    """'--xla_foo=1' -> 'xla_foo' (the key XLA parses)."""
    return flag.lstrip("-").split("=", 1)[0]


def compose_xla_flags(user_flags: str, defaults: Sequence[str] = GPU_FLAGS) -> str:
    """The user's XLA_FLAGS followed by each default the user did not set themselves."""
    user_names = {flag_name(flag) for flag in user_flags.split()}
    added = [flag for flag in defaults if flag_name(flag) not in user_names]
    return " ".join([user_flags.strip(), *added]).strip()


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    return environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "off", "no")


def configure(environ: MutableMapping[str, str] = os.environ) -> str:
    """Sets XLA_FLAGS in `environ` (before the backend starts) and returns its value."""
    if enabled(environ):
        environ["XLA_FLAGS"] = compose_xla_flags(environ.get("XLA_FLAGS", ""))
    return environ.get("XLA_FLAGS", "")

