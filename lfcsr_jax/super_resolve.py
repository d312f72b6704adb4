"""Super-resolve image files with an LFc-SR export.

  python -m lfcsr_jax.super_resolve --checkpoint=EXPORT_DIR INPUT... --output=OUT_DIR \
      [--alpha=0] [--tile=0] [--tile_overlap=32] [--dtype=auto|float32|bfloat16|float16]
      [--bucket=32] [--batch=0] [--memory_budget=] [--xla_cache_dir=] [--format=png|npy]
      [--fail_fast]

Speed (lfcsr_jax/inference/): the compute dtype defaults to bfloat16 on GPU/TPU and float32 on
CPU; images run padded to a few bucketed shapes with the padding masked out exactly (the output
equals the unpadded forward to float rounding), so a folder of many sizes compiles a few
programs; same-bucket images run --batch at a time (bounded by free memory); reads and PNG
writes run in a small thread pool beside the device; compiled programs persist in
~/.cache/lfcsr_jax/xla (--xla_cache_dir). The summary line reports the compile count.

INPUT, --checkpoint and --output: local paths or gs:// URIs (lfcsr_jax.paths), mixed freely.
INPUT: image files and/or folders of images (not recursive). Grayscale, gray+alpha, palette, RGBA
(alpha dropped) and 16-bit images are read as RGB uint8, upright (EXIF orientation applied,
image_io.py); outputs are always RGB, upright, with no orientation tag.
--alpha blends the two stages: 0 = the perceptual output Y (the model's final output, default),
1 = the objective output Y', in between alpha Y' + (1 - alpha) Y.
--format png: clamped to [0, 255] and rounded; npy: float32 on the 0-255 scale, unquantised.
--output: a folder (files are named <stem>_x4.<format>), or a file path ending in .png/.npy when
there is exactly one input image. Refuses to write over any input (local files compared by file
identity, so a hard link to an input counts as that input; gs:// objects by their URI). Every
output is encoded in memory, then written whole: locally to a temporary file in its folder that
is renamed into place, on gs:// as one upload (an object appears complete or not at all), so an
interrupted or failed write never leaves a truncated file under the final name. The output
location is checked before the model is loaded.
A file that cannot be read or written is reported on stderr and the others are still processed;
the command then ends with `written N, failed M: ...` and exit status 2 (--fail_fast: stop at the
first bad file instead).

Tiling (--tile=T > 0, in LR pixels): the LR image is cut into T x T tiles whose neighbours overlap
by --tile_overlap = O pixels; every tile's output gets a weight that is 0 in the outer O/4 of each
cut edge (the pixels a cut disturbs most), ramps linearly to 1 over the next O/2, and is 1 inside;
the weighted outputs are divided by the summed weights (a partition of unity, so no seams). For a
purely local network whose receptive-field radius is <= O/4 LR pixels this is exactly the untiled
result. LFc-SR is not purely local: HAN's channel attention (a global average pool in every RCAB)
and its layer attention (a Gram matrix over all positions) see the whole tile, so tiled outputs
differ slightly from untiled ones (measured on a random tiny model: max 0.01 on the 0-255 scale
with a large overlap). Hence two modes:
  --tile_mode=both (default): both stages per LR tile; approximate for the reason above.
  --tile_mode=perceptual: G_O runs on the whole image (its global attention sees everything), and
    only G_P, which is purely local (convolutions and PReLU on the Haar bands) and the larger
    memory consumer, is tiled over Y' (tile and overlap still in LR pixels). Exact (float
    rounding aside) when overlap/4 >= G_P's receptive-field radius, `perceptual_receptive_radius`
    (about 47 LR pixels for the paper's 15 blocks, so --tile_overlap >= 188).
A tile larger than the image is exactly the untiled computation.
--tile=0 (default) runs whole images, unless an image's estimated activation memory exceeds the
device's free memory (GPU/TPU), on CPU 75% of the host memory available to the process (its
cgroup limit, else MemAvailable), or --memory_budget / $LFCSR_MEMORY_BUDGET: then it is tiled
with the largest tile that fits, and the console says so with the tile size and the budget.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.errors import reports_user_errors
from lfcsr_jax.inference.compile_cache import (CompileStats, compile_summary,
                                                configure_compilation_cache)
from lfcsr_jax.inference.memory import choose_tile, format_bytes, max_batch, memory_budget
from lfcsr_jax.inference.model import LoadedModel, load_model
from lfcsr_jax.inference.settings import InferenceError, add_flags
from lfcsr_jax.paths import check_output_dir, same_location

Path = paths.Path  # every input and output location, local or gs://

OUTPUT_FORMATS = ("png", "npy")
# Suffixes that show --output was meant as one file (of a format we do not write).
_FILE_LIKE_SUFFIXES = (".png", ".npy", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                       ".gif")


SuperResolveError = InferenceError  # a bad input, checkpoint or output choice


def perceptual_receptive_radius(model_cfg: dict[str, Any]) -> int:
    """G_P's receptive-field radius in LR pixels (rounded up) from the config.

    At HR/2 (Haar bands): stem + expand + 6 chained 3x3 convs per Res-clique block
    (ll1 -> lh1 -> hh1 -> hh2 -> hl2 -> ll2) + tail, 1 pixel each; x2 for HR, +2 for the Haar
    block alignment of the DWT and inverse DWT; / scale for LR.
    """
    convs = 2 + 6 * int(model_cfg["clique_blocks"]) + 1
    hr_radius = 2 * convs + 2
    return -(-hr_radius // int(model_cfg["scale"]))


# ----------------------------------------------------------------------------- tiling


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering [0, length): stride tile - overlap, last one flush with the end."""
    if tile <= 0 or tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise SuperResolveError(f"--tile_overlap={overlap} must be >= 0 and < --tile={tile}")
    starts = list(range(0, length - tile, tile - overlap)) + [length - tile]
    return sorted(set(starts))


def _axis_weights(start: int, size: int, length: int, overlap: int, scale: int) -> np.ndarray:
    """HR blending weights of one tile along one axis: 0 over the outer overlap/4 of a cut edge,
    a linear ramp over the next overlap/2, 1 elsewhere (image borders are not cut edges)."""
    n = size * scale
    centres = np.arange(n, dtype=np.float64) + 0.5
    margin, ramp = overlap * scale / 4.0, max(overlap * scale / 2.0, 1.0)
    weights = np.ones(n)
    if start > 0:
        weights = np.minimum(weights, np.clip((centres - margin) / ramp, 0.0, 1.0))
    if start + size < length:
        weights = np.minimum(weights, np.clip((n - centres - margin) / ramp, 0.0, 1.0))
    return weights


def tiled_apply(fn: Callable[[np.ndarray], np.ndarray], lr_hxwxc: np.ndarray, scale: int,
                tile: int = 0, overlap: int = 32) -> np.ndarray:
    """`fn` (LR tile -> x`scale` output tile) over overlapping tiles, blended (module docstring).

    tile <= 0, or a tile covering the image, calls `fn` once on the whole image.
    """
    h, w = lr_hxwxc.shape[:2]
    rows, cols = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return np.asarray(fn(lr_hxwxc), dtype=np.float32)
    th, tw = min(tile, h), min(tile, w)
    out, total = None, np.zeros((h * scale, w * scale, 1), np.float64)
    for top in rows:
        wy = _axis_weights(top, th, h, overlap, scale)
        for left in cols:
            wx = _axis_weights(left, tw, w, overlap, scale)
            piece = np.asarray(fn(lr_hxwxc[top:top + th, left:left + tw]), dtype=np.float64)
            if out is None:
                out = np.zeros((h * scale, w * scale, piece.shape[-1]), np.float64)
            weight = (wy[:, None] * wx[None, :])[..., None]
            ys, xs = slice(top * scale, (top + th) * scale), slice(left * scale, (left + tw) * scale)
            out[ys, xs] += weight * piece
            total[ys, xs] += weight
    return (out / total).astype(np.float32)


TILE_MODES = ("both", "perceptual")


def super_resolve_array(model: LoadedModel, lr_hxwx3: np.ndarray, alpha: float = 0.0,
                        tile: int = 0, overlap: int = 32, tile_mode: str = "both") -> np.ndarray:
    """alpha Y' + (1 - alpha) Y of one LR image (float32 HxWx3 on the 0-255 scale, unclipped)."""
    if not 0.0 <= alpha <= 1.0:
        raise SuperResolveError(f"--alpha={alpha} must lie in [0, 1]")
    if tile_mode not in TILE_MODES:
        raise SuperResolveError(f"--tile_mode={tile_mode}: choose one of {TILE_MODES}")
    if tile_mode == "perceptual":
        y_objective = model.objective(lr_hxwx3)
        if alpha == 1.0:
            return y_objective
        s = model.scale  # tiles on the HR grid, aligned to LR pixels (so to the Haar 2x2 blocks)
        y_perceptual = tiled_apply(model.perceptual, y_objective, 1, tile * s, overlap * s)
        return alpha * y_objective + (1.0 - alpha) * y_perceptual

    def blended(lr_tile: np.ndarray) -> np.ndarray:
        y_objective, y_perceptual = model.predict(lr_tile)
        return alpha * y_objective + (1.0 - alpha) * y_perceptual

    return tiled_apply(blended, lr_hxwx3, model.scale, tile, overlap)


# ----------------------------------------------------------------------------- files


def collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Image files named directly or found (by suffix) in the given folders (local or gs://)."""
    from lfcsr_jax.input import image_io  # pylint: disable=import-outside-toplevel

    files: list[Path] = []
    for item in inputs:
        path = paths.location(item)
        if path.is_dir():
            try:
                files.extend(paths.location(f) for f in image_io.list_images(path))
            except FileNotFoundError as e:
                raise SuperResolveError(f"input {item}: {e}") from e
        elif path.is_file():
            files.append(path)
        else:
            raise SuperResolveError(f"input {item}: no such file or folder")
    if not files:
        raise SuperResolveError("no input images given")
    return files


def _is_single_file(output: str) -> bool:
    out = paths.location(output)
    return out.suffix.lower() in _FILE_LIKE_SUFFIXES and not out.is_dir()


def check_output(output: str, fmt: str, num_inputs: int) -> None:
    """Checks the --output location (cheap, creates nothing) before the model is loaded."""
    if fmt not in OUTPUT_FORMATS:
        raise SuperResolveError(f"--format={fmt}: choose one of {OUTPUT_FORMATS}")
    if not output:
        raise SuperResolveError("--output is required (a folder, or a .png/.npy file for one input)")
    out = paths.location(output)
    if _is_single_file(output):
        if out.suffix.lower() not in (".png", ".npy"):
            raise SuperResolveError(f"--output={out}: {out.suffix} files are not written; name a "
                                    "folder, or a .png / .npy file (with --format=npy)")
        if num_inputs != 1:
            raise SuperResolveError(f"--output={out} is a single file but {num_inputs} inputs "
                                    "were given")
        if out.suffix.lower() != f".{fmt}":
            raise SuperResolveError(f"--output={out} does not end with .{fmt} (--format={fmt})")
        check_output_dir(out.parent, "--output's folder")
    else:
        check_output_dir(out, "--output")


def _identity(path: Path) -> str:
    """What names one file: a local path resolved (symlinks followed), a URI as normalised text."""
    return str(path) if paths.is_remote(path) else str(path.resolve())


def plan_outputs(files: Sequence[Path], output: str, fmt: str, scale: int) -> list[Path]:
    """Output path per input; errors for name clashes and for outputs that are inputs.

    "Is an input" compares file identity (device and inode), so neither a symlink nor a hard
    link to an input can make the program write over it.
    """
    check_output(output, fmt, len(files))
    out = paths.location(output)
    if _is_single_file(output):
        targets = [out]
    else:
        targets = [out / f"{f.stem}_x{scale}.{fmt}" for f in files]
    inputs = {_identity(f) for f in files}
    seen: set[str] = set()
    for source, target in zip(files, targets):
        if target.exists():
            clash = next((f for f in files if same_location(target, f)), None)
            if clash is not None:
                raise SuperResolveError(f"output {target} would overwrite the input {clash}")
        elif _identity(target) in inputs:
            raise SuperResolveError(f"output {target} would overwrite the input {target}")
        if _identity(target) in seen:
            raise SuperResolveError(f"two inputs would both be written to {target} (input {source})")
        seen.add(_identity(target))
    return targets


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """`write(binary file)` into memory, then the bytes written whole onto `path` (local or gs://).

    paths.write_bytes_atomic: locally a temporary file beside `path` renamed onto it, on gs://
    one upload; either way `path` holds its old content or the complete new one, even if the
    process is killed or the disk fills up, and nothing is left behind on failure. An existing
    local `path` is replaced as a new file (a hard link to it keeps the old content). A failed
    gs:// write is raised as OSError, like a local one, so the caller reports it per file.
    """
    buffer = io.BytesIO()
    write(buffer)  # encoding errors surface before anything is touched
    target = paths.location(path)
    if not paths.is_remote(target):
        target.parent.mkdir(parents=True, exist_ok=True)  # gs:// has no folders to create
    try:
        paths.write_bytes_atomic(target, buffer.getvalue())
    except OSError:
        raise
    except Exception as e:  # gcsfs' HTTP errors are not OSErrors
        raise OSError(f"{type(e).__name__}: {e}") from e


def write_output(path: str | os.PathLike, sr_hxwx3: np.ndarray, fmt: str) -> None:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.evaluation import metrics  # pylint: disable=import-outside-toplevel

    if fmt == "npy":
        data = np.asarray(sr_hxwx3, dtype=np.float32)
        atomic_write(path, lambda handle: np.save(handle, data))
    else:
        image = Image.fromarray(np.asarray(metrics.quantize(sr_hxwx3), dtype=np.uint8))
        atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def build_parser() -> argparse.ArgumentParser:
    from lfcsr_jax.input import image_io  # pylint: disable=import-outside-toplevel

    p = argparse.ArgumentParser(prog="python -m lfcsr_jax.super_resolve",
                                description="Super-resolve images with an LFc-SR export.",
                                epilog=image_io.ORIENTATION_NOTE)
    p.add_argument("inputs", nargs="+", help="image files and/or folders (local or gs://)")
    p.add_argument("--checkpoint", required=True, help="export directory (local or gs://)")
    p.add_argument("--output", required=True,
                   help="output folder, or one .png/.npy file (local or gs://)")
    p.add_argument("--alpha", type=float, default=0.0, help="0 = perceptual Y, 1 = objective Y'")
    p.add_argument("--tile", type=int, default=0,
                   help="LR tile size (0 = whole image, tiled by itself only when the estimated "
                   "activation memory exceeds the free device memory, on CPU 75%% of the available "
                   "host memory)")
    p.add_argument("--tile_overlap", type=int, default=32, help="LR pixels shared by neighbours")
    p.add_argument("--tile_mode", default="both", choices=TILE_MODES,
                   help="both: tile both stages (approximate); perceptual: tile only G_P (exact)")
    add_flags(p)  # --dtype, --bucket, --xla_cache_dir
    p.add_argument("--batch", type=int, default=0,
                   help="images of one bucket per forward, at most (0 = auto: 8 on GPU/TPU, "
                   "bounded by free memory; 1 on CPU)")
    p.add_argument("--memory_budget", default="",
                   help="bytes the forward may use, e.g. 2G (default: $LFCSR_MEMORY_BUDGET, else "
                   "the free device memory; on CPU 75%% of the host memory available: cgroup limit "
                   "or MemAvailable)")
    p.add_argument("--format", default="png", choices=OUTPUT_FORMATS)
    p.add_argument("--fail_fast", action="store_true",
                   help="stop at the first unreadable or unwritable file (default: report it, "
                   "go on with the others, and exit 2 at the end)")
    return p


BIG_INPUT_BYTES = 2 ** 30  # with no memory figure at all, estimates above this are printed


def _read(source: Path) -> tuple[np.ndarray | None, str]:
    from lfcsr_jax.input import image_io  # pylint: disable=import-outside-toplevel

    try:
        return image_io.read_image(source), ""
    except image_io.ImageReadError as e:
        return None, str(e)


def plan_tile(model: LoadedModel, name: str, h: int, w: int, args: argparse.Namespace,
              budget: int | None, budget_source: str = "free memory") -> int:
    """--tile if given; else 0 (whole image) unless the activation estimate exceeds `budget`,
    then the largest tile that fits (said on stderr, with where the budget came from). Without
    a budget (no memory figure at all) big estimates are only printed."""
    if args.tile:
        return args.tile
    need = model.activation_bytes(h, w)
    if budget is None:
        if need > BIG_INPUT_BYTES:
            print(f"[super_resolve] {name}: {h}x{w} LR, estimated activation memory "
                  f"{format_bytes(need)} (untiled; --tile=T to tile)", file=sys.stderr)
        return 0
    if need <= budget:
        return 0
    tile = choose_tile(model, h, w, budget, args.tile_overlap)
    print(f"[super_resolve] {name}: estimated activation memory {format_bytes(need)} > "
          f"{format_bytes(budget)} ({budget_source}): tiling with --tile={tile} "
          f"--tile_overlap={args.tile_overlap} (--tile_mode={args.tile_mode})", file=sys.stderr)
    return tile


def _check_run_args(args: argparse.Namespace) -> None:
    """The flags that need no file read, before anything is loaded."""
    if not 0.0 <= args.alpha <= 1.0:
        raise SuperResolveError(f"--alpha={args.alpha} must lie in [0, 1]")
    if args.tile < 0 or args.tile_overlap < 0 or (args.tile and args.tile_overlap >= args.tile):
        raise SuperResolveError(f"need --tile >= 0 and 0 <= --tile_overlap < --tile, got "
                                f"{args.tile}, {args.tile_overlap}")
    if args.batch < 0:
        raise SuperResolveError(f"--batch={args.batch} must be >= 0 (0 = auto)")


Pair = tuple[Path, Path]  # (input file, output file)


def _read_ahead(pool: Any, chunks: Sequence[Sequence[Pair]]
                ) -> Iterator[tuple[Sequence[Pair], list[tuple[np.ndarray | None, str]]]]:
    """(chunk, its decoded images) in order; the next chunk decodes while this one runs."""
    reads = [pool.submit(_read, source) for source, _ in chunks[0]] if chunks else []
    for index, chunk in enumerate(chunks):
        decoded = [future.result() for future in reads]
        if index + 1 < len(chunks):
            reads = [pool.submit(_read, source) for source, _ in chunks[index + 1]]
        yield chunk, decoded


class _Runner:
    """Runs decoded images through the model, same-bucket images in batches, and writes the
    outputs on the pool behind the device. Holds what the run has done: `written`, `failed`."""

    def __init__(self, model: LoadedModel, args: argparse.Namespace, pool: Any, bar: Any,
                 budget: tuple[int | None, str], batch_limit: int):
        self.model, self.args, self.pool, self.bar = model, args, pool, bar
        self.budget, self.budget_source = budget
        self.batch_limit = batch_limit
        self.written: list[Path] = []
        self.failed: list[str] = []
        self._writes: list[tuple[Any, Path, Path]] = []  # (future, source, target), in order
        self._groups: dict[tuple[int, int], list[tuple[Path, Path, np.ndarray]]] = {}

    def run_chunk(self, chunk: Sequence[Pair],
                  decoded: Sequence[tuple[np.ndarray | None, str]]) -> None:
        for (source, target), (lr, problem) in zip(chunk, decoded):
            if lr is None:
                self._flush()  # the images before it first: --fail_fast stops exactly here
                self.finish_writes(wait=True)
                self._fail(source, problem)
                self.bar.update(1)
                continue
            tile = plan_tile(self.model, source.name, lr.shape[0], lr.shape[1], self.args,
                             self.budget, self.budget_source)
            if tile:
                sr = super_resolve_array(self.model, lr, self.args.alpha, tile,
                                         self.args.tile_overlap, self.args.tile_mode)
                self._write(source, target, sr)
                self.bar.update(1)
                continue
            model = self.model
            key = model.bucketed_lr_shape(*lr.shape[:2]) if model.bucket else lr.shape[:2]
            self._groups.setdefault(key, []).append((source, target, lr))
        self._flush()
        self.finish_writes(wait=False)

    def _flush(self) -> None:
        """Runs the queued images, each bucket in batches that fit the memory budget."""
        for (hb, wb), members in self._groups.items():
            size = max_batch(self.model, hb, wb, self.budget, self.batch_limit)
            for start in range(0, len(members), size):
                part = members[start:start + size]
                outputs = self.model.predict_batch([lr for _, _, lr in part])
                alpha = self.args.alpha
                for (source, target, _), (y_o, y_p) in zip(part, outputs):
                    self._write(source, target, alpha * y_o + (1.0 - alpha) * y_p)
                self.bar.update(len(part))
        self._groups.clear()

    def _write(self, source: Path, target: Path, sr_hxwx3: np.ndarray) -> None:
        future = self.pool.submit(write_output, target, sr_hxwx3, self.args.format)
        self._writes.append((future, source, target))

    def finish_writes(self, wait: bool) -> None:
        """Records the writes that are done (all of them when `wait`), in submission order."""
        while self._writes and (wait or self._writes[0][0].done()):
            future, source, target = self._writes.pop(0)
            try:
                future.result()
                self.written.append(target)
            except OSError as e:
                self._fail(source, f"{target}: cannot write ({e.strerror or e})")

    def _fail(self, source: Path, problem: str) -> None:
        if self.args.fail_fast:
            raise SuperResolveError(problem)
        print(f"super_resolve: failed: {problem}", file=sys.stderr, flush=True)
        self.failed.append(str(source))


def run(args: argparse.Namespace) -> list[Path]:
    """Reads (a small thread pool, ahead of the device), runs same-bucket images in batches,
    writes (the pool again, behind the device); prints a summary with the compile count."""
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel

    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from lfcsr_jax import object_store  # pylint: disable=import-outside-toplevel

    object_store.check_locations([("--checkpoint", args.checkpoint, True),
                                  ("--output", args.output, False),
                                  *(("INPUT", source, True) for source in args.inputs)])
    _check_run_args(args)
    files = collect_inputs(args.inputs)
    check_output(args.output, args.format, len(files))  # before the model is loaded
    budget = memory_budget(args.memory_budget)
    configure_compilation_cache(getattr(args, "xla_cache_dir", ""))
    stats_before = CompileStats.snapshot()
    model = load_model(args.checkpoint, args.dtype, args.bucket)
    targets = plan_outputs(files, args.output, args.format, model.scale)
    radius = perceptual_receptive_radius(model.config)
    if args.tile and args.tile_mode == "perceptual" and args.tile_overlap < 4 * radius:
        print(f"[super_resolve] note: --tile_overlap={args.tile_overlap} < 4 x G_P's receptive "
              f"radius ({radius} LR px): tiles are not exact", file=sys.stderr)
    import jax  # pylint: disable=import-outside-toplevel

    batch_limit = args.batch or (1 if jax.default_backend() == "cpu" else 8)
    pairs = list(zip(files, targets))
    window = max(2 * batch_limit, 4)  # images decoded ahead of the device
    chunks = [pairs[i:i + window] for i in range(0, len(pairs), window)]
    with ThreadPoolExecutor(max_workers=3) as pool, \
            tqdm(total=len(pairs), unit="img", file=sys.stderr) as bar:
        runner = _Runner(model, args, pool, bar, budget, batch_limit)
        for chunk, decoded in _read_ahead(pool, chunks):
            runner.run_chunk(chunk, decoded)
        runner.finish_writes(wait=True)
    stats = CompileStats.since(stats_before)
    print(f"[super_resolve] written {len(runner.written)}; "
          f"{compile_summary(model, stats)}", file=sys.stderr)
    if runner.failed:
        raise SuperResolveError(f"written {len(runner.written)}, failed {len(runner.failed)}: "
                                + ", ".join(runner.failed))
    return runner.written


@reports_user_errors("super_resolve")
def main(argv: Sequence[str] | None = None) -> list[Path]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    from lfcsr_jax import runtime

    runtime.configure()  # GPU runtime settings, before the JAX backend starts
    main()
