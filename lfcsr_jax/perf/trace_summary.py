"""Device time of a profiled step, attributed to model parts and op kinds.

Input: the perfetto JSON that `jax.profiler.trace(..., create_perfetto_trace=True)` writes, and
the compiled module's HLO text. Kernels in the trace carry HLO instruction names; the HLO text maps
each instruction to the `op_name` metadata JAX gave it, i.e. the Flax/JAX name scope it came from
(`.../objective/groups/blocks/conv1/...`, `transpose(jvp(...))` for the backward). Kernels replayed
inside CUDA graphs carry no instruction name, so attribute time from a trace taken with command
buffers off (tools/benchmark.py --profile does both).
"""

from __future__ import annotations

import collections
import gzip
import json
import re
from typing import Any, Iterable

_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name="([^"]+)"')

# Model parts by the Flax module path in the op_name (first match wins).
PARTS = (
    ("G_O", re.compile(r"(^|/)objective(/|$)|\bHAN\b")),
    ("G_P", re.compile(r"(^|/)perceptual(/|$)|\bResClique\b")),
    ("D", re.compile(r"(^|/)discriminator(/|$)|\bDiscriminator\b")),
    ("VGG19", re.compile(r"(^|/)vgg(/|$)|VGG19")),
)


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> op_name metadata, for every instruction that has one."""
    names: dict[str, str] = {}
    for line in hlo_text.splitlines():
        match = _HLO_INSTRUCTION.match(line)
        if match:
            names.setdefault(match.group(1), match.group(2))
    return names


def model_part(op_name: str) -> str:
    """'G_O fwd', 'G_P bwd', ... or 'other' (losses, optimizer, data movement)."""
    direction = "bwd" if "transpose(" in op_name else "fwd"
    for part, pattern in PARTS:
        if pattern.search(op_name):
            return f"{part} {direction}"
    return "other"


def op_kind(kernel_name: str) -> str:
    """A kernel's family: its name without instance numbers ('loop_add_fusion.12' -> 'loop_add_fusion')."""
    kind = re.sub(r"[._]\d+$", "", kernel_name)
    return re.sub(r"\d+", "#", kind)[:60]


def load_events(path: str) -> list[dict[str, Any]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as handle:
        trace = json.load(handle)
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def _device_pids(events: Iterable[dict[str, Any]]) -> set[int]:
    names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    return {pid for pid, name in names.items() if "/device:" in name and "CPU" not in name}


def _busy_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (us in, ms out): overlapping streams count once."""
    total, current_end = 0.0, float("-inf")
    current_start = 0.0
    for start, end in sorted(intervals):
        if start > current_end:
            if current_end > float("-inf"):
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end > float("-inf"):
        total += current_end - current_start
    return total / 1e3


def summarise(events: list[dict[str, Any]], steps: int, names: dict[str, str] | None = None,
              wall_ms_per_step: float | None = None) -> dict[str, Any]:
    """Per-step device numbers: busy ms, kernel count, ms by model part and by op kind."""
    names = names or {}
    pids = _device_pids(events)
    by_part: collections.Counter = collections.Counter()
    by_kind: collections.Counter = collections.Counter()
    intervals: list[tuple[float, float]] = []
    kernels = 0
    for event in events:
        if event.get("ph") != "X" or "dur" not in event or event.get("pid") not in pids:
            continue
        args = event.get("args") or {}
        kernel = event.get("name", "")
        instruction = args.get("hlo_op", "") or kernel
        op_name = names.get(instruction) or args.get("tf_op", "") or args.get("long_name", "")
        duration_ms = float(event["dur"]) / 1e3
        by_part[model_part(op_name)] += duration_ms
        by_kind[op_kind(kernel)] += duration_ms
        intervals.append((float(event["ts"]), float(event["ts"]) + float(event["dur"])))
        kernels += 1
    per_step = max(steps, 1)
    summary: dict[str, Any] = {
        "device_streams": len(pids),
        "kernels_per_step": kernels / per_step,
        "busy_ms_per_step": _busy_ms(intervals) / per_step,
        "kernel_ms_per_step": sum(by_part.values()) / per_step,
        "by_part_ms_per_step": {k: round(v / per_step, 4) for k, v in by_part.most_common()},
        "by_kind_ms_per_step": {k: round(v / per_step, 4) for k, v in by_kind.most_common(25)},
    }
    if wall_ms_per_step is not None:
        summary["wall_ms_per_step"] = wall_ms_per_step
        summary["busy_fraction"] = summary["busy_ms_per_step"] / max(wall_ms_per_step, 1e-9)
    return summary
