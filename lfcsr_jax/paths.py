"""One path type for every location a user gives: local paths and object-store URIs (gs://).

Every program reads and writes user-given locations through `etils.epath.Path` (docs/design.md,
section 14). Local paths behave exactly as `pathlib.Path`; `gs://bucket/...` goes to Cloud
Storage. For gs:// we make epath use fsspec/gcsfs instead of TensorFlow's gfile: gcsfs honours
`STORAGE_EMULATOR_HOST`, so the very client a TPU VM uses is the one the tests run against a local
GCS emulator, whereas TensorFlow's GCS client has its endpoint compiled in. lfcsr_jax/__init__.py
makes that choice (`EPATH_USE_TF=0`) before anything picks a backend; a user who sets
`EPATH_USE_TF` keeps their choice.

What "atomic" means on each store (see `write_bytes_atomic`):
- local: a temporary sibling, fsync, then `os.replace`; readers see the old or the new file.
- gs://: a single-object upload becomes visible whole, on completion, or not at all, so one file
  is written in place. A folder cannot be renamed on GCS (a "rename" copies each object), so
  folders are written in place with a completion marker written last (see weights/exports.py).
"""

from __future__ import annotations

import os
import tempfile
from typing import Union

from etils import epath

from lfcsr_jax import object_store
from lfcsr_jax.errors import UserError

Path = epath.Path
PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
    """True for object-store URIs (gs://, s3://, ...), False for local paths."""
    return "://" in os.fspath(path)


def location(text: PathLike) -> epath.Path:
    """A user-given location as the one path type: a local path gets `~` expanded and becomes
    absolute (so it survives a chdir); a URI is kept as given (no `absolute()` on a URI)."""
    raw = os.fspath(text)
    if is_remote(raw):
        return epath.Path(raw.rstrip("/"))
    return epath.Path(os.path.abspath(os.path.expanduser(raw)))


def local_path(path: PathLike) -> str:
    """The path as a local filename; raises ValueError for a URI (for libraries that need one)."""
    if is_remote(path):
        raise ValueError(f"{os.fspath(path)}: needs a local path, not an object-store URI")
    return os.fspath(path)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    """Readers see the old file or the whole new one, never a part (see the module note)."""
    target = location(path)
    if is_remote(target):
        # One object upload, all or nothing, so a retry after a dropped connection is safe.
        object_store.retry_transient(lambda: target.write_bytes(data), f"upload of {target}")
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=os.fspath(target.parent))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, os.fspath(target))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_tree(path: PathLike) -> None:
    """Removes a folder and everything under it; nothing happens when it does not exist."""
    target = location(path)
    if target.exists():
        target.rmtree()


def move_tree(source: PathLike, target: PathLike) -> None:
    """Moves a folder to `target` (which must not exist), creating target's parent. Local: one
    rename. gs://: every object is copied, then the originals are deleted (not atomic: see the
    module note), through gcsfs, as epath's rename of a folder needs the target's parent folder
    to exist, and GCS has no folders."""
    source, target = location(source), location(target)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    if not is_remote(source) and not is_remote(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        return
    from etils.epath import backend  # the fsspec filesystem behind gs://

    backend.fsspec_backend.fs(os.fspath(source)).mv(os.fspath(source), os.fspath(target),
                                                     recursive=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_identity(path: PathLike) -> tuple[str, int, int]:
    """(canonical name, size, version) of a file: a rewritten file gets a new identity. Local:
    the resolved path and mtime in ns; object stores: the URI and the object's generation (GCS
    gives every upload a new one), falling back to its mtime."""
    target = location(path)
    if not is_remote(target):
        stat = os.stat(target)
        return os.path.realpath(target), stat.st_size, stat.st_mtime_ns
    from etils.epath import backend  # the fsspec filesystem behind gs://

    info = backend.fsspec_backend.fs(os.fspath(target)).info(os.fspath(target))
    version = info.get("generation") or target.stat().mtime
    return os.fspath(target), int(info.get("size") or 0), int(version)


# ----------------------------------------------------------------------------- output locations


def check_output_dir(path: PathLike, flag: str) -> Path:
    """Fails now (before any compute) unless `path` is, or can be created as, a writable folder.

    Creates no folder: walks up to the nearest existing ancestor, which must be a folder where a
    file can be created (tested by creating and removing one).
    On an object store (gs://) there are no folders to create and no write permission to probe
    without writing; the checks are that no object has the name of the folder or of a folder
    above it, and that the bucket exists.
    """
    shown = os.fspath(path)
    out = location(path)
    if is_remote(out):
        try:
            _check_remote_output_dir(out, shown, flag)
        except UserError:
            raise
        except Exception as error:  # no credentials, no network: gcsfs raises its own types
            raise UserError(f"{flag}={shown} cannot be checked ({type(error).__name__}: "
                            f"{error})") from error
        return out
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag}={shown} exists and is not a folder")
    probe = out
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{flag}={shown}: {probe} is a file, so no folder can be created below it")
    _check_writable_by_writing(probe, shown, flag)
    return out


def _check_writable_by_writing(folder: Path, shown: str, flag: str) -> None:
    """Creates and removes a small file in `folder`. os.access answers from the permission bits
    and says yes to root on any folder, including read-only mounts and pseudo file systems
    (/sys, /proc) where every write fails; only a write tells."""
    try:
        fd, probe_file = tempfile.mkstemp(prefix=".lfcsr-write-probe-", dir=os.fspath(folder))
    except OSError as error:
        raise UserError(f"{flag}={shown}: {folder} is not writable ({error.strerror or error}); "
                        "choose a folder you can write to") from error
    os.close(fd)
    os.unlink(probe_file)


def _check_remote_output_dir(out: Path, shown: str, flag: str) -> None:
    """An object named like the folder or a folder above it would hide what is written below;
    a missing bucket would fail only at the first write, after the compute."""
    if out.is_file():
        raise UserError(f"{flag}={shown} exists and is not a folder")
    bucket = bucket_of(out)
    probe = out.parent
    while len(os.fspath(probe)) > len(os.fspath(bucket)):
        if probe.is_file():
            raise UserError(f"{flag}={shown}: {probe} is a file, so no folder can be created "
                            "below it")
        probe = probe.parent
    if not bucket.exists():
        raise UserError(f"{flag}={shown}: bucket {bucket} does not exist or is not readable")


def bucket_of(path: PathLike) -> Path:
    """gs://bucket of gs://bucket/a/b (the URI's scheme and first component)."""
    scheme, _, rest = os.fspath(path).partition("://")
    return Path(f"{scheme}://{rest.split('/', 1)[0]}")


def same_location(a: PathLike, b: PathLike) -> bool:
    """Whether two user-given locations name the same file or folder (an output that would
    overwrite an input). Local: file identity (a symlink or hard link counts), else the resolved
    paths; URIs: the normalised strings (an object store has no links)."""
    if is_remote(a) or is_remote(b):
        return os.fspath(location(a)) == os.fspath(location(b))
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)
