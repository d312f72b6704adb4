"""How much memory a forward needs and may use: when to tile an image, how many to batch.

`estimate_activation_bytes` against `memory_budget`: on GPU/TPU the device's free memory; on
CPU a share of the host memory available to the process (the cgroup limit or MemAvailable).
"""

from __future__ import annotations

import os
import re
from typing import Any, Protocol

import numpy as np

from lfcsr_jax.inference.settings import InferenceError
from lfcsr_jax.models import generator

MEMORY_BUDGET_ENV = "LFCSR_MEMORY_BUDGET"


class SizedModel(Protocol):
    """What tiling and batching need of a model (model.LoadedModel has it)."""

    def activation_bytes(self, h: int, w: int, batch: int = 1) -> int: ...


def estimate_activation_bytes(model_cfg: dict[str, Any], h: int, w: int, batch: int = 1) -> int:
    """Rough peak activation memory of the two-stage forward on a batch of h x w LR images.

    Per LR pixel (elements): HAN keeps the G group outputs and the (G+1)-map layer-attention
    stack and its reshapes (~3 (G+1) F) plus working maps, and its x4 upsampler reaches 32 F;
    G_P works at half the HR resolution (4 band pixels per LR pixel) and keeps all N block
    outputs (4g each) and their concatenation. Times the compute dtype's size. An estimate, not
    a bound: XLA's buffer reuse decides the real peak."""
    itemsize = np.dtype(generator.compute_dtype(model_cfg)).itemsize
    g, f = int(model_cfg["han_resgroups"]), int(model_cfg["han_features"])
    n, growth, stem = (int(model_cfg[k]) for k in ("clique_blocks", "clique_growth", "clique_stem"))
    s2 = int(model_cfg["scale"]) ** 2
    han = 3 * (g + 1) * f + 4 * f + 2 * s2 * f
    clique = (s2 // 4) * (2 * n * 4 * growth + 3 * 4 * growth + 2 * stem)
    images = 4 * s2 * 3  # input, outputs, mean shifts, at HR
    return int(batch * h * w * (han + clique + images) * itemsize)


def parse_bytes(text: str) -> int:
    """'512M', '2G', '1.5GiB', '1000000' -> bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not match:
        raise InferenceError(f"memory budget {text!r}: expected bytes like 512M or 2G")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


# On CPU, the forward's activations may take this share of the available host memory, less a
# fixed reserve: the rest is for what the estimate leaves out. Measured (tools/cpu_memory.py,
# demo model, float32, compile included): peak RSS above the loaded model 138 / 195 / 405 /
# 1270 MiB at 64 / 128 / 256 / 512 LR pixels square, for estimates of 29 / 117 / 468 / 1872 MiB:
# a fixed ~110 MiB (XLA's compile and runtime) plus about 0.7 x the estimate.
HOST_MEMORY_SHARE = 0.75
HOST_MEMORY_RESERVE = 256 * 2 ** 20


def free_device_memory(budget: str = "") -> int | None:
    """Bytes the forward may use (memory_budget without the description)."""
    return memory_budget(budget)[0]


def memory_budget(budget: str = "") -> tuple[int | None, str]:
    """(bytes the forward may use, where that figure comes from): `budget` or
    $LFCSR_MEMORY_BUDGET if given; else the default device's free memory (bytes_limit -
    bytes_in_use, GPU/TPU); else, on CPU, HOST_MEMORY_SHARE of the host memory available to
    this process (host_available_bytes) less HOST_MEMORY_RESERVE (at least a quarter of it);
    (None, '') when nothing is known."""
    if budget:
        return parse_bytes(budget), "--memory_budget"
    if os.environ.get(MEMORY_BUDGET_ENV, ""):
        return parse_bytes(os.environ[MEMORY_BUDGET_ENV]), f"${MEMORY_BUDGET_ENV}"
    import jax  # pylint: disable=import-outside-toplevel

    device = jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  # backends without memory stats
        stats = {}
    if "bytes_limit" in stats:
        return (int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)),
                "free device memory")
    if device.platform != "cpu":
        return None, ""
    available = host_available_bytes()
    if available is None:
        return None, ""
    usable = max(int(available * HOST_MEMORY_SHARE) - HOST_MEMORY_RESERVE, available // 4)
    return usable, (f"host memory available {format_bytes(available)}, less a margin for XLA "
                    "and I/O")


def host_available_bytes(meminfo: str = "/proc/meminfo",
                         cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """Memory this process can still get: the smaller of the kernel's MemAvailable and what its
    cgroup's limit leaves (v2 memory.max - memory.current, or v1 memory.limit_in_bytes -
    memory.usage_in_bytes; page cache it can reclaim, inactive_file, counted as free). None
    when neither is readable (not Linux)."""
    candidates = []
    try:
        with open(meminfo, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)  # kB
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        limit = _read_int(os.path.join(cgroup_root, limit_file))
        usage = _read_int(os.path.join(cgroup_root, usage_file))
        if limit is None or usage is None or limit >= 2 ** 60:  # v1 "no limit" is ~2^63
            continue
        stat = os.path.join(cgroup_root, os.path.dirname(limit_file), "memory.stat")
        reclaimable = _read_stat(stat, ("inactive_file", "total_inactive_file"))
        candidates.append(max(0, limit - max(0, usage - reclaimable)))
        break
    return min(candidates) if candidates else None


def _read_int(path: str) -> int | None:
    """An integer file such as memory.max; None if absent, unreadable or 'max' (no limit)."""
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _read_stat(path: str, keys: tuple[str, ...]) -> int:
    try:
        with open(path, encoding="ascii") as handle:
            for line in handle:
                name, _, value = line.partition(" ")
                if name in keys:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


def choose_tile(model: SizedModel, h: int, w: int, budget: int, overlap: int) -> int:
    """The largest LR tile (in steps of 8, > overlap) whose bucketed estimate fits `budget`."""
    step = 8
    tile = -(-max(h, w) // step) * step
    while tile > overlap + step and model.activation_bytes(min(tile, h), min(tile, w)) > budget:
        tile -= step
    if model.activation_bytes(min(tile, h), min(tile, w)) > budget:
        raise InferenceError(f"even a {tile}x{tile} LR tile needs about "
                             f"{format_bytes(model.activation_bytes(tile, tile))} (> "
                             f"{format_bytes(budget)}): lower --tile_overlap or free memory")
    return tile


def max_batch(model: SizedModel, h: int, w: int, budget: int | None, limit: int) -> int:
    """How many h x w images fit one forward: <= limit, and within `budget` when known."""
    if budget is None:
        return max(limit, 1)
    fits = budget // max(model.activation_bytes(h, w), 1)
    return int(max(1, min(limit, fits)))


def format_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"
