"""The generator export (what evaluation and inference load), and the array checksums that both
it and the training checkpoints (training/checkpointing.py) record.

Export layout (what `evaluate`, `super_resolve` and `convert pdasr` read and write):
  EXPORT_DIR/config.json   {"model": <model config dict>, "format": "lfcsr_jax.export/1", ...}
  EXPORT_DIR/params/       an Orbax StandardCheckpointer tree {"objective": ..., "perceptual": ...}
On a local disk, writes go to a temporary sibling (`.<name>.tmp-*`) first and are renamed into
place, so a crash never leaves a half-written export behind; a sibling left by a killed export is
removed by the next export to the same place. On gs:// a folder cannot be renamed (docs/design.md,
section 14): the export is written in place, config.json last, and config.json is removed first
when an export is replaced, so a reader that finds config.json finds a complete export. A corrupt export (unreadable config.json, truncated or random
params/) raises CheckpointError naming the file.

Integrity (docs/design.md, section 14): every save records a SHA-256 of every array it writes
(its dtype, shape and bytes), in config.json for an export and in a `checksums` JSON item of the
same Orbax step for a training checkpoint, so the record is committed with the arrays or not at
all. Every restore recomputes and compares them. Exports and checkpoints written before checksums
existed load unverified, with a log line saying so.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging as logging_std
import os
import shutil
import sys
import threading
import tempfile
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from lfcsr_jax import paths
from lfcsr_jax.errors import UserError, one_line
from lfcsr_jax.paths import Path

EXPORT_FORMAT = "lfcsr_jax.export/1"
GENERATOR_KEYS = ("objective", "perceptual")
CHECKSUM_ALGORITHM = "sha256"  # hardware-accelerated (SHA-NI, ARMv8): faster than blake2b
_HASH_THREADS = max(1, min(8, os.cpu_count() or 1))


class CheckpointError(UserError):
    """A checkpoint or export that cannot be used, with the path and the reason."""


class DamagedCheckpoint(Exception):
    """A training checkpoint that fails to read or to verify; `reason` is a short slug."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


# ----------------------------------------------------------------------------- checksums


def _host_array(leaf: Any) -> np.ndarray:
    """The whole array on this host; a leaf split over several processes (dual s on a pod) is
    gathered, which every process does at the same point of save and restore."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))
    return np.asarray(leaf)


def array_checksum(x: np.ndarray) -> str:
    """SHA-256 of dtype (name: ml_dtypes share .str per size; and .str: byte order), shape and
    the C-order bytes: equal values, equal digest."""
    x = np.ascontiguousarray(x)
    digest = hashlib.sha256(f"{x.dtype.name}{x.dtype.str}{x.shape}".encode())
    digest.update(memoryview(x.reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def _leaf_entry(leaf: Any) -> dict[str, Any]:
    x = _host_array(leaf)
    return {"dtype": x.dtype.name, "shape": list(x.shape), CHECKSUM_ALGORITHM: array_checksum(x)}


def tree_checksums(tree: Any) -> dict[str, Any]:
    """{"algorithm", "leaves": {key path: {"dtype", "shape", "sha256"}}} of every array leaf.

    hashlib releases the GIL, so leaves are hashed on a few threads (paper model's training
    state, 1.3 GiB: tools/checksum_cost.py). Leaves split over processes are gathered first,
    in tree order on this thread, as every process must gather them in the same order."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    keys = [jax.tree_util.keystr(key_path) for key_path, _ in flat]
    leaves = [leaf if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable
              else _host_array(leaf) for _, leaf in flat]
    with concurrent.futures.ThreadPoolExecutor(_HASH_THREADS) as pool:
        entries = list(pool.map(_leaf_entry, leaves))
    return {"algorithm": CHECKSUM_ALGORITHM, "leaves": dict(zip(keys, entries))}


def _tree_specs(tree: Any) -> dict[str, tuple[str, list[int]]]:
    return {jax.tree_util.keystr(k): (np.dtype(leaf.dtype).name, list(leaf.shape))
            for k, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def structure_mismatch(recorded: dict[str, Any], abstract: Any) -> str:
    """'' when the recorded leaves have the paths, dtypes and shapes of `abstract`, else the
    first difference (a checkpoint of another config: not damage)."""
    want = _tree_specs(abstract)
    have = {k: (v["dtype"], list(v["shape"])) for k, v in recorded["leaves"].items()}
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            return f"{key or 'root'}: recorded {have.get(key)}, expected {want.get(key)}"
    return ""


def verify_checksums(tree: Any, recorded: Any) -> str:
    """'' when every leaf of `tree` matches `recorded` (tree_checksums' output), else a
    description of the first difference."""
    if (not isinstance(recorded, dict) or recorded.get("algorithm") != CHECKSUM_ALGORITHM
            or not isinstance(recorded.get("leaves"), dict)):
        return f"checksum record malformed (expected algorithm {CHECKSUM_ALGORITHM!r} and leaves)"
    actual = tree_checksums(tree)["leaves"]
    if set(actual) != set(recorded["leaves"]):
        missing = sorted(set(recorded["leaves"]) - set(actual))
        extra = sorted(set(actual) - set(recorded["leaves"]))
        return f"arrays differ from the record (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, entry in actual.items():
        if not isinstance(recorded["leaves"][key], dict) or entry != recorded["leaves"][key]:
            return f"checksum mismatch in {key or 'the root array'}"
    return ""


def _check_generator_tree(params: dict[str, Any], where: str) -> None:
    missing = [k for k in GENERATOR_KEYS if k not in params]
    extra = [k for k in params if k not in GENERATOR_KEYS]
    if missing or extra:
        raise CheckpointError(
            f"{where}: generator params must have exactly the keys {GENERATOR_KEYS}; "
            f"missing {missing}, unexpected {extra}"
        )


def save_export(
    directory: str | os.PathLike,
    generator_params: dict[str, Any],
    model_config: dict[str, Any],
    extra_info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes generator params + model config atomically; returns the export directory."""
    target = paths.location(directory)
    _check_generator_tree(generator_params, str(target))
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target}: already exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    host_params = jax.tree_util.tree_map(np.asarray, generator_params)
    info = {"format": EXPORT_FORMAT, "model": jsonable(model_config)}
    info.update(extra_info or {})
    info["checksums"] = tree_checksums(host_params)  # config.json is written last: the commit
    if paths.is_remote(target):
        _save_export_in_place(target, host_params, info)
        return target
    _remove_stale_staging(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=os.fspath(target.parent)))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; an export is an ordinary folder
        checkpointer = _this_process_only_checkpointer()
        checkpointer.save(staging / "params", host_params)
        checkpointer.wait_until_finished()
        (staging / "config.json").write_text(json.dumps(info, indent=2, sort_keys=True))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _save_export_in_place(target: Path, host_params: Any, info: dict[str, Any]) -> None:
    """The object-store export: config.json is the completion marker, removed first and written
    last, because a GCS "rename" of a folder is a copy of each object and is not atomic."""
    marker = target / "config.json"
    if marker.exists():
        marker.unlink()
    paths.remove_tree(target)
    checkpointer = _this_process_only_checkpointer()
    checkpointer.save(target / "params", host_params)
    checkpointer.wait_until_finished()
    paths.write_text_atomic(marker, json.dumps(info, indent=2, sort_keys=True))


def load_export(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Reads an export: returns (model config dict, generator params as numpy arrays)."""
    source = paths.location(directory)
    config_file = source / "config.json"
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such export directory")
    if not config_file.is_file():
        raise CheckpointError(f"{source}: not an lfcsr_jax export (no config.json)")
    try:
        info = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file}: unreadable or not JSON ({e}); the export is "
                              "damaged: re-export or re-convert the model") from e
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise CheckpointError(
            f"{config_file}: format {found!r}, expected {EXPORT_FORMAT!r}"
        )
    if not isinstance(info.get("model"), dict):
        raise CheckpointError(f"{config_file}: no 'model' config object; re-export the model")
    params_dir = source / "params"
    if not params_dir.is_dir():
        raise CheckpointError(f"{source}: export has no params/ directory")
    metadata = params_dir / "_METADATA"
    if metadata.is_file():
        try:
            json.loads(metadata.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{metadata}: unreadable or not JSON ({e}); the export is "
                                  "damaged: re-export or re-convert the model") from e
    silence_closed_event_loop_reports()
    try:
        params = _this_process_only_checkpointer().restore(params_dir)
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files
        first = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{params_dir}: cannot read the parameters ({type(e).__name__}: "
                              f"{first}); the export is truncated or damaged: re-export or "
                              "re-convert the model") from e
    if not isinstance(params, dict):
        raise CheckpointError(f"{params_dir}: expected a tree of parameters, got "
                              f"{type(params).__name__}")
    _check_generator_tree(params, str(source))
    if "checksums" not in info:
        logging.warning("%s: written before exports carried checksums; loaded unverified "
                        "(re-export to add them)", config_file)
    else:
        problem = verify_checksums(params, info["checksums"])
        if problem:
            raise CheckpointError(f"{params_dir}: {problem} against {config_file}; the export "
                                  "is damaged: re-export or re-convert the model")
    return info["model"], params


def short_reason(error: BaseException, limit: int = 240) -> str:
    """A TensorStore error without its JSON specs, and its end when long: the innermost cause
    (the file and e.g. 'Data corruption detected') comes last in its chain of contexts."""
    text = one_line(error).split(" [tensorstore_spec", 1)[0]
    return text if len(text) <= limit else "..." + text[-limit:]


def _drop_unretrieved_task_reports(record: logging_std.LogRecord) -> bool:
    """asyncio's 'Task exception was never retrieved': Orbax stops at the first failed array
    read and leaves the other reads' failures unretrieved; each would print its multi-line
    TensorStore error at garbage collection, after the one-line report."""
    return not record.getMessage().startswith("Task exception was never retrieved")


def silence_closed_event_loop_reports() -> None:
    """Installed before every export restore. When the params are damaged, TensorStore still
    completes the reads it had queued after Orbax has failed and closed its asyncio loop; each
    one prints a 'RuntimeError: Event loop is closed' traceback through sys.excepthook (about
    150 lines for a random-data export), burying the one-line error. Drop exactly those
    reports; every other exception is printed as before."""
    previous = sys.excepthook
    if getattr(previous, "_drops_closed_event_loop", False):
        return
    logging_std.getLogger("asyncio").addFilter(_drop_unretrieved_task_reports)

    def hook(kind, value, traceback):
        if kind is RuntimeError and str(value) == "Event loop is closed":
            return
        previous(kind, value, traceback)

    hook._drops_closed_event_loop = True  # type: ignore[attr-defined]
    sys.excepthook = hook
    # The same reports also arrive from TensorStore's callback threads and as "unraisable"
    # exceptions of finalisers; filter those channels the same way.
    previous_thread_hook = threading.excepthook

    def thread_hook(args):
        if args.exc_type is RuntimeError and str(args.exc_value) == "Event loop is closed":
            return
        previous_thread_hook(args)

    threading.excepthook = thread_hook
    previous_unraisable = sys.unraisablehook

    def unraisable_hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous_unraisable(unraisable)

    sys.unraisablehook = unraisable_hook


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_staging(target: Path) -> None:
    """Removes `.<name>.tmp-*` siblings: staging folders of exports that were killed mid-write."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _this_process_only_checkpointer() -> ocp.StandardCheckpointer:
    """Exports are host-local numpy trees: one process reads or writes them, with no barrier."""
    me = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=me, active_processes={me}))


def jsonable(value: Any) -> Any:
    """ConfigDicts, tuples and numpy scalars as plain JSON values."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
