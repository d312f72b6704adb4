"""Running an LFc-SR export: loading, bucketed exact forwards, batching, memory, compile cache.

Shared by `super_resolve` (image files) and `evaluate` (benchmarks).

* dtype: '' / 'auto' computes in bfloat16 on GPU/TPU and float32 on CPU; 'float32', 'bfloat16',
  'float16' force one. Params are cast to the compute dtype once, at load.
* Buckets: every image runs padded up to a bucketed shape (`bucket_dim`: a multiple of 32 LR
  pixels, coarser steps for large sides, at most 1/8 extra per side), with a valid-pixel mask
  that the generators use to zero the padding after every layer and to take every mean over the
  valid pixels only (models/generator.py). The cropped output equals the forward of the unpadded
  image to float rounding (tests/inference_test.py measures it), and a folder of many sizes
  compiles a handful of shapes instead of one per size. `bucket=0` runs exact shapes, unmasked.
* `LoadedModel.compiled_shapes`: the distinct (stage, input shape) programs this model ran, i.e.
  the compiles it caused (or loaded from the persistent cache).
* `configure_compilation_cache`: JAX's persistent compilation cache in
  ~/.cache/lfcsr_jax/xla (XDG_CACHE_HOME respected; LFCSR_XLA_CACHE or the programs'
  --xla_cache_dir override it, 'off' disables it), caching every program, CPU ones included, so a
  second run of the same command loads its executables instead of compiling them. A gs:// cache
  folder is handed to JAX as is (JAX reads and writes it through etils.epath, i.e. gcsfs here).
* Checkpoints may be local folders or gs:// URIs (lfcsr_jax.paths).
* `estimate_activation_bytes` / `memory_budget`: when to tile and how many images to batch (on
  CPU against the host memory available: the cgroup limit or MemAvailable).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.errors import UserError
from lfcsr_jax.models import generator
from lfcsr_jax.weights import exports

DTYPES = ("float32", "bfloat16", "float16")  # generator.compute_dtype accepts these three
DTYPE_CHOICES = ("", "auto") + DTYPES
BUCKET = 32  # LR pixels; the smallest bucket step
CACHE_ENV = "LFCSR_XLA_CACHE"
MEMORY_BUDGET_ENV = "LFCSR_MEMORY_BUDGET"


class InferenceError(UserError):
    """A bad checkpoint or inference setting; the message names the file or flag."""


# ----------------------------------------------------------------------------- dtype


def add_flags(parser: Any) -> None:
    """--dtype, --bucket and --xla_cache_dir: how super_resolve and evaluate run the generators."""
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU) | "
                        + " | ".join(DTYPES))
    parser.add_argument("--bucket", type=int, default=BUCKET,
                        help="run images padded (exactly, masked) to bucketed shapes in steps of "
                        "this many LR pixels, so many sizes compile a few shapes (0 = exact "
                        "shapes, one compile per size)")
    parser.add_argument("--xla_cache_dir", default="",
                        help="persistent compilation cache (default: $LFCSR_XLA_CACHE, else "
                        "~/.cache/lfcsr_jax/xla; 'off' disables it)")


def default_dtype(backend: str | None = None) -> str:
    """bfloat16 on accelerators (GPU, TPU), float32 on CPU."""
    if backend is None:
        import jax  # pylint: disable=import-outside-toplevel

        backend = jax.default_backend()
    return "float32" if backend == "cpu" else "bfloat16"


def resolve_dtype(dtype: str) -> str:
    """'' / 'auto' -> default_dtype(); a named dtype as given; anything else is an error."""
    if dtype in ("", "auto"):
        return default_dtype()
    if dtype not in DTYPES:
        raise InferenceError(f"--dtype={dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return dtype


# ----------------------------------------------------------------------------- buckets


def bucket_dim(n: int, step: int = BUCKET) -> int:
    """`n` rounded up to its bucket: a multiple of max(step, 2^floor(log2 n) / 8), so at most
    1/8 of padding per side and O(8 log n) sizes overall; step <= 0: `n` itself."""
    if step <= 0:
        return n
    coarse = (1 << max(int(n).bit_length() - 1, 0)) // 8
    s = max(step, coarse)
    return -(-n // s) * s


def batch_bucket(n: int) -> int:
    """Batch sizes run as the next power of two (fewer shapes to compile)."""
    return 1 << max(n - 1, 0).bit_length()


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass
class LoadedModel:
    """An export ready to run: `predict(lr HxWx3 uint8/float 0-255) -> (Y', Y)` float32 HxWx3."""

    config: dict[str, Any]
    params: Any  # cast to the compute dtype once, on the device
    apply_fn: Callable[..., tuple[Any, Any]]  # jitted (params, lr_Bxhxwx3, mask|None) -> (y_o, y_p)
    objective_fn: Callable[..., Any]  # jitted (params['objective'], lr, mask|None) -> y_o
    perceptual_fn: Callable[..., Any]  # jitted (params['perceptual'], y_o, mask|None) -> y_p
    bucket: int = BUCKET  # 0: exact shapes (one compile per image size)
    compiled_shapes: set = dataclasses.field(default_factory=set)
    _lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False)

    @property
    def scale(self) -> int:
        return int(self.config["scale"])

    @property
    def compile_count(self) -> int:
        return len(self.compiled_shapes)

    def bucketed_lr_shape(self, h: int, w: int) -> tuple[int, int]:
        return bucket_dim(h, self.bucket), bucket_dim(w, self.bucket)

    def _run(self, stage: str, fn: Callable, params: Any, images: Sequence[np.ndarray],
             out_scale: int, step: int) -> list[Any]:
        """`fn` on `images` (same bucket) padded into one batch with their mask; cropped outputs."""
        shapes = [np.shape(x)[:2] for x in images]
        if step <= 0:
            if len(set(shapes)) != 1:
                raise ValueError(f"exact-shape batches need one image size, got {shapes}")
            x = np.stack([np.asarray(i, np.float32) for i in images])
            key, mask = (stage, x.shape), None
        else:
            hb = max(bucket_dim(h, step) for h, _ in shapes)
            wb = max(bucket_dim(w, step) for _, w in shapes)
            b = batch_bucket(len(images))
            x = np.zeros((b, hb, wb, 3), np.float32)
            mask = np.zeros((b, hb, wb, 1), np.float32)
            for k, (img, (h, w)) in enumerate(zip(images, shapes)):
                x[k, :h, :w] = img
                mask[k, :h, :w] = 1.0
            key = (stage, x.shape)
        with self._lock:
            self.compiled_shapes.add(key)
            out = fn(params, x, mask)
        outs = out if isinstance(out, tuple) else (out,)
        outs = [np.asarray(o, dtype=np.float32) for o in outs]
        result = []
        for k, (h, w) in enumerate(shapes):
            crop = tuple(o[k, :h * out_scale, :w * out_scale] for o in outs)
            result.append(crop if isinstance(out, tuple) else crop[0])
        return result

    def predict_batch(self, lrs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(Y', Y) of several LR images in ONE forward (pad them to a common bucket)."""
        return self._run("both", self.apply_fn, self.params, lrs, self.scale, self.bucket)

    def predict(self, lr_hxwx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_batch([lr_hxwx3])[0]

    def objective(self, lr_hxwx3: np.ndarray) -> np.ndarray:
        """Y' = G_O(lr) alone, float32 HxWx3."""
        return self._run("objective", self.objective_fn, self.params["objective"], [lr_hxwx3],
                         self.scale, self.bucket)[0]

    def perceptual(self, y_objective_hxwx3: np.ndarray) -> np.ndarray:
        """Y = G_P(Y') alone, float32 HxWx3 (H, W even)."""
        h, w = np.shape(y_objective_hxwx3)[:2]
        if h % 2 or w % 2:
            raise ValueError(f"G_P needs an even height and width, got {h}x{w}")
        # Bucketed on the HR grid in steps of (LR bucket) x scale: even, Haar-block aligned.
        return self._run("perceptual", self.perceptual_fn, self.params["perceptual"],
                         [y_objective_hxwx3], 1, self.bucket * self.scale)[0]

    def activation_bytes(self, h: int, w: int, batch: int = 1) -> int:
        """estimate_activation_bytes of an h x w LR image in its bucket."""
        hb, wb = self.bucketed_lr_shape(h, w)
        return estimate_activation_bytes(self.config, hb, wb, batch)


def load_model(checkpoint: str | os.PathLike, dtype: str = "",
               bucket: int = BUCKET) -> LoadedModel:
    """Reads an export (exports.save_export; a local folder or a gs:// URI) and jits the
    two-stage forward.

    `dtype`: '' / 'auto' = bfloat16 on GPU/TPU, float32 on CPU; or a named compute dtype. Params
    are cast to it once here; outputs are float32. `bucket`: see the module docstring.
    """
    import jax  # pylint: disable=import-outside-toplevel

    if not os.fspath(checkpoint):
        raise InferenceError("checkpoint '' does not exist (pass an export directory written by "
                             "save_export / the training program)")
    path = paths.location(checkpoint)
    if not path.exists():
        raise InferenceError(f"checkpoint {str(checkpoint)!r} does not exist (pass an export "
                             "directory written by save_export / the training program)")
    if not path.is_dir():
        raise InferenceError(f"checkpoint {path} is a file; pass an export directory (the "
                             "folder holding config.json and params/)")
    if (path / "export" / "config.json").is_file() or (path / "checkpoints").is_dir():
        raise InferenceError(f"checkpoint {path} is a training workdir, not an export; pass "
                             f"--checkpoint={path / 'export'}")
    dtype = resolve_dtype(dtype)
    if bucket < 0:
        raise InferenceError(f"--bucket={bucket} must be >= 0 (0 = exact shapes)")
    try:
        model_cfg, params = exports.load_export(path)
    except exports.CheckpointError as e:
        raise InferenceError(f"checkpoint {path}: {e}") from e
    check_params_match_config(path, model_cfg, params)
    model_cfg = dict(model_cfg)
    model_cfg["dtype"] = dtype
    fns = _jitted_forwards(json.dumps(model_cfg, sort_keys=True))
    params = generator.cast_for_compute(jax.device_put(params), generator.compute_dtype(model_cfg))
    return LoadedModel(model_cfg, params, *fns, bucket=bucket)


def check_params_match_config(path: paths.Path, model_cfg: dict[str, Any], params: Any) -> None:
    """An export whose config.json no longer describes its params/ is named, not a flax error."""
    import jax  # pylint: disable=import-outside-toplevel

    try:
        model = generator.build_lfcsr(model_cfg)
        expected = jax.eval_shape(lambda k: generator.init_params(model, k, (1, 8, 8, 3)),
                                  jax.random.PRNGKey(0))
    except (KeyError, TypeError, ValueError) as e:
        raise InferenceError(f"checkpoint {path}: {path / 'config.json'} has an unusable "
                             f"model config ({e}); re-export the model") from e
    want = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(k): tuple(np.shape(v))
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if want != have:
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        shown = ", ".join(f"{k} (config {want.get(k)}, params {have.get(k)})" for k in differ[:3])
        raise InferenceError(
            f"checkpoint {path}: config.json does not match params/ ({len(differ)} parameters "
            f"differ, e.g. {shown}); the export was edited or mixed up: re-export the model")


@functools.lru_cache(maxsize=8)
def _jitted_forwards(model_cfg_json: str) -> tuple[Callable, Callable, Callable]:
    """(both stages, G_O, G_P) jitted, shared by every load of the same config, so a second load
    (evaluate then super_resolve, or tests) reuses the compiled executables. Each takes
    (params, x, mask): mask None runs the exact shape, else the bucketed masked forward."""
    import jax  # pylint: disable=import-outside-toplevel

    model_cfg = json.loads(model_cfg_json)
    model = generator.build_lfcsr(model_cfg)
    objective = generator.build_objective(model_cfg)
    perceptual = generator.build_perceptual(model_cfg)

    def apply(p, lr_Bxhxwx3, mask=None):
        y_objective, y_perceptual = generator.apply_generator(model, p, lr_Bxhxwx3, mask)
        return y_objective.astype("float32"), y_perceptual.astype("float32")

    def apply_objective(p, lr_Bxhxwx3, mask=None):
        return generator.apply_generator(objective, p, lr_Bxhxwx3, mask).astype("float32")

    def apply_perceptual(p, y_BxHxWx3, mask=None):
        return generator.apply_generator(perceptual, p, y_BxHxWx3, mask).astype("float32")

    return jax.jit(apply), jax.jit(apply_objective), jax.jit(apply_perceptual)


# ----------------------------------------------------------------------------- memory


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


def choose_tile(model: LoadedModel, h: int, w: int, budget: int, overlap: int) -> int:
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


def max_batch(model: LoadedModel, h: int, w: int, budget: int | None, limit: int) -> int:
    """How many h x w images fit one forward: <= limit, and within `budget` when known."""
    if budget is None:
        return max(limit, 1)
    fits = budget // max(model.activation_bytes(h, w), 1)
    return int(max(1, min(limit, fits)))


def format_bytes(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


# ----------------------------------------------------------------------------- compile cache


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lfcsr_jax" / "xla"


def configure_compilation_cache(cache_dir: str = "") -> Path | paths.Path | None:
    """Turns on JAX's persistent compilation cache: `cache_dir`, else $LFCSR_XLA_CACHE, else
    default_cache_dir(); 'off' / '0' / 'none' leaves it off. Every program is cached (no minimum
    compile time or size), so CPU compiles are reused too. Returns the folder (None: off).

    A gs:// folder is supported: JAX opens non-local cache folders through etils.epath (so
    gcsfs here, like every other gs:// location); it is created on first write, nothing to make."""
    import jax  # pylint: disable=import-outside-toplevel

    choice = cache_dir or os.environ.get(CACHE_ENV, "")
    if choice.strip().lower() in ("off", "0", "none", "false"):
        return None
    if paths.is_remote(choice):
        folder: Path | paths.Path = paths.location(choice)
    else:
        folder = Path(choice).expanduser() if choice else default_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InferenceError(f"compilation cache {folder}: cannot create it "
                                 f"({e.strerror or e}); pass --xla_cache_dir=off or another "
                                 "folder") from e
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    try:  # a process that compiled before this call decided "no cache" already: re-decide
        from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel

        compilation_cache.reset_cache()
    except (ImportError, AttributeError):
        pass
    return folder


class CompileStats:
    """XLA compiles seen by this process (jax.monitoring): backend compiles, their seconds, and
    how many came from the persistent cache. One listener for the process; `snapshot()` and
    differences of snapshots measure a stretch of a run."""

    _installed = False
    counts = {"compiles": 0, "seconds": 0.0, "cache_hits": 0}

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        import jax  # pylint: disable=import-outside-toplevel

        def on_duration(event: str, duration: float, **_: Any) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                cls.counts["compiles"] += 1
                cls.counts["seconds"] += float(duration)

        def on_event(event: str, **_: Any) -> None:
            if event == "/jax/compilation_cache/cache_hits":
                cls.counts["cache_hits"] += 1

        jax.monitoring.register_event_duration_secs_listener(on_duration)
        jax.monitoring.register_event_listener(on_event)
        cls._installed = True

    @classmethod
    def snapshot(cls) -> dict[str, float]:
        cls.install()
        return dict(cls.counts)

    @staticmethod
    def since(before: dict[str, float]) -> dict[str, float]:
        now = CompileStats.snapshot()
        out = {k: now[k] - before[k] for k in now}
        out["seconds"] = round(out["seconds"], 2)
        out["compiled"] = out["compiles"] - out["cache_hits"]  # not served by the cache
        return out


def compile_summary(model: LoadedModel, stats: dict[str, float] | None = None) -> str:
    """One line for a program's summary: the distinct model shapes run, and XLA's compiles."""
    text = f"model compiles (distinct shapes): {model.compile_count}"
    if stats is not None:
        text += (f"; XLA programs: {int(stats['compiles'])} ({int(stats['cache_hits'])} from the "
                 f"persistent cache), {stats['seconds']:.1f} s")
    return text
