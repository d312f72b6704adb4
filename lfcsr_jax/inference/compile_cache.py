"""JAX's persistent compilation cache for the programs, and the compiles a run caused.

`configure_compilation_cache`: the cache in ~/.cache/lfcsr_jax/xla (XDG_CACHE_HOME respected;
LFCSR_XLA_CACHE or the programs' --xla_cache_dir override it, 'off' disables it), caching every
program, CPU ones included, so a second run of the same command loads its executables instead of
compiling them. A gs:// cache folder is handed to JAX as is (JAX reads and writes it through
etils.epath, i.e. gcsfs here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from lfcsr_jax import paths
from lfcsr_jax.inference.settings import InferenceError

CACHE_ENV = "LFCSR_XLA_CACHE"


class CountsCompiles(Protocol):
    """What the summary line needs of a model (model.LoadedModel has it)."""

    @property
    def compile_count(self) -> int: ...


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


def compile_summary(model: CountsCompiles, stats: dict[str, float] | None = None) -> str:
    """One line for a program's summary: the distinct model shapes run, and XLA's compiles."""
    text = f"model compiles (distinct shapes): {model.compile_count}"
    if stats is not None:
        text += (f"; XLA programs: {int(stats['compiles'])} ({int(stats['cache_hits'])} from the "
                 f"persistent cache), {stats['seconds']:.1f} s")
    return text
