"""Super-resolve image files with an LFc-SR export.

  python -m lfcsr_jax.super_resolve --checkpoint=EXPORT_DIR INPUT... --output=OUT_DIR \
      [--alpha=0] [--tile=0] [--tile_overlap=32] [--dtype=float32|bfloat16|float16]
      [--format=png|npy] [--fail_fast]

INPUT: image files and/or folders of images (not recursive). Grayscale, gray+alpha, palette, RGBA
(alpha dropped) and 16-bit images are read as RGB uint8 (image_io.py); outputs are always RGB.
--alpha blends the two stages: 0 = the perceptual output Y (the model's final output, default),
1 = the objective output Y', in between alpha Y' + (1 - alpha) Y.
--format png: clamped to [0, 255] and rounded; npy: float32 on the 0-255 scale, unquantised.
--output: a folder (files are named <stem>_x4.<format>), or a file path ending in .png/.npy when
there is exactly one input image. Refuses to write over any input (compared by file identity, so
a hard link to an input counts as that input). Every output is written to a temporary file in its
folder and renamed into place, so an interrupted or failed write never leaves a truncated file
under the final name. The output location is checked before the model is loaded.
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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lfcsr_jax.cli_errors import UserError, check_output_dir, reports_user_errors

OUTPUT_FORMATS = ("png", "npy")
DTYPES = ("float32", "bfloat16", "float16")  # generator.compute_dtype accepts these three
# Suffixes that show --output was meant as one file (of a format we do not write).
_FILE_LIKE_SUFFIXES = (".png", ".npy", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm",
                       ".gif")


class SuperResolveError(UserError):
    """A bad input, checkpoint or output choice; the message names the file."""


@dataclasses.dataclass
class LoadedModel:
    """An export ready to run: `predict(lr HxWx3 uint8/float 0-255) -> (Y', Y)` float32 HxWx3."""

    config: dict[str, Any]
    params: Any
    apply_fn: Callable[[Any, Any], tuple[Any, Any]]  # jitted (params, lr_1xhxwx3) -> (y_o, y_p)
    objective_fn: Callable[[Any, Any], Any]  # jitted (params['objective'], lr) -> y_o
    perceptual_fn: Callable[[Any, Any], Any]  # jitted (params['perceptual'], y_o) -> y_p

    @property
    def scale(self) -> int:
        return int(self.config["scale"])

    def predict(self, lr_hxwx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lr = np.asarray(lr_hxwx3, dtype=np.float32)[None]
        y_objective, y_perceptual = self.apply_fn(self.params, lr)
        return (np.asarray(y_objective[0], dtype=np.float32),
                np.asarray(y_perceptual[0], dtype=np.float32))

    def objective(self, lr_hxwx3: np.ndarray) -> np.ndarray:
        """Y' = G_O(lr) alone, float32 HxWx3."""
        y = self.objective_fn(self.params["objective"], np.asarray(lr_hxwx3, np.float32)[None])
        return np.asarray(y[0], dtype=np.float32)

    def perceptual(self, y_objective_hxwx3: np.ndarray) -> np.ndarray:
        """Y = G_P(Y') alone, float32 HxWx3 (H, W even)."""
        y = self.perceptual_fn(self.params["perceptual"],
                               np.asarray(y_objective_hxwx3, np.float32)[None])
        return np.asarray(y[0], dtype=np.float32)


def perceptual_receptive_radius(model_cfg: dict[str, Any]) -> int:
    """G_P's receptive-field radius in LR pixels (rounded up) from the config.

    At HR/2 (Haar bands): stem + expand + 6 chained 3x3 convs per Res-clique block
    (ll1 -> lh1 -> hh1 -> hh2 -> hl2 -> ll2) + tail, 1 pixel each; x2 for HR, +2 for the Haar
    block alignment of the DWT and inverse DWT; / scale for LR.
    """
    convs = 2 + 6 * int(model_cfg["clique_blocks"]) + 1
    hr_radius = 2 * convs + 2
    return -(-hr_radius // int(model_cfg["scale"]))


def load_model(checkpoint: str | Path, dtype: str = "") -> LoadedModel:
    """Reads an export (checkpointing.save_export) and jits the two-stage forward.

    `dtype` overrides the compute dtype of the export's config ('float32', 'bfloat16'); params
    stay float32 and the outputs are returned as float32. Each new input shape compiles once.
    """
    import jax  # pylint: disable=import-outside-toplevel

    from lfcsr_jax import checkpointing  # pylint: disable=import-outside-toplevel

    path = Path(checkpoint)
    if not str(checkpoint) or not path.exists():
        raise SuperResolveError(f"checkpoint {str(checkpoint)!r} does not exist (pass an export "
                                "directory written by save_export / the training program)")
    if not path.is_dir():
        raise SuperResolveError(f"checkpoint {path} is a file; pass an export directory (the "
                                "folder holding config.json and params/)")
    if (path / "export" / "config.json").is_file() or (path / "checkpoints").is_dir():
        raise SuperResolveError(f"checkpoint {path} is a training workdir, not an export; pass "
                                f"--checkpoint={path / 'export'}")
    if dtype and dtype not in DTYPES:
        raise SuperResolveError(f"--dtype={dtype!r}: choose one of {', '.join(DTYPES)}")
    try:
        model_cfg, params = checkpointing.load_export(path)
    except checkpointing.CheckpointError as e:
        raise SuperResolveError(f"checkpoint {path}: {e}") from e
    check_params_match_config(path, model_cfg, params)
    model_cfg = dict(model_cfg)
    if dtype:
        model_cfg["dtype"] = dtype
    fns = _jitted_forwards(json.dumps(model_cfg, sort_keys=True))
    return LoadedModel(model_cfg, jax.device_put(params), *fns)


def check_params_match_config(path: Path, model_cfg: dict[str, Any], params: Any) -> None:
    """An export whose config.json no longer describes its params/ is named, not a flax error."""
    import jax  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.models import generator  # pylint: disable=import-outside-toplevel

    try:
        model = generator.build_lfcsr(model_cfg)
        expected = jax.eval_shape(lambda k: generator.init_params(model, k, (1, 8, 8, 3)),
                                  jax.random.PRNGKey(0))
    except (KeyError, TypeError, ValueError) as e:
        raise SuperResolveError(f"checkpoint {path}: {path / 'config.json'} has an unusable "
                                f"model config ({e}); re-export the model") from e
    want = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(k): tuple(np.shape(v))
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if want != have:
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        shown = ", ".join(f"{k} (config {want.get(k)}, params {have.get(k)})" for k in differ[:3])
        raise SuperResolveError(
            f"checkpoint {path}: config.json does not match params/ ({len(differ)} parameters "
            f"differ, e.g. {shown}); the export was edited or mixed up: re-export the model")


@functools.lru_cache(maxsize=8)
def _jitted_forwards(model_cfg_json: str) -> tuple[Callable, Callable, Callable]:
    """(both stages, G_O, G_P) jitted, shared by every load of the same config, so a second load
    (evaluate then super_resolve, or tests) reuses the compiled executables."""
    import jax  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.models import generator  # pylint: disable=import-outside-toplevel

    model_cfg = json.loads(model_cfg_json)
    model = generator.build_lfcsr(model_cfg)
    objective = generator.build_objective(model_cfg)
    perceptual = generator.build_perceptual(model_cfg)

    def apply(p, lr_1xhxwx3):
        y_objective, y_perceptual = generator.apply_generator(model, p, lr_1xhxwx3)
        return y_objective.astype("float32"), y_perceptual.astype("float32")

    def apply_objective(p, lr_1xhxwx3):
        return generator.apply_generator(objective, p, lr_1xhxwx3).astype("float32")

    def apply_perceptual(p, y_1xHxWx3):
        return generator.apply_generator(perceptual, p, y_1xHxWx3).astype("float32")

    return jax.jit(apply), jax.jit(apply_objective), jax.jit(apply_perceptual)


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
    """Image files named directly or found (by suffix) in the given folders."""
    from lfcsr_jax import image_io  # pylint: disable=import-outside-toplevel

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                files.extend(image_io.list_images(path))
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
    return Path(output).suffix.lower() in _FILE_LIKE_SUFFIXES and not Path(output).is_dir()


def check_output(output: str, fmt: str, num_inputs: int) -> None:
    """Checks the --output location (cheap, creates nothing) before the model is loaded."""
    if fmt not in OUTPUT_FORMATS:
        raise SuperResolveError(f"--format={fmt}: choose one of {OUTPUT_FORMATS}")
    if not output:
        raise SuperResolveError("--output is required (a folder, or a .png/.npy file for one input)")
    out = Path(output)
    if _is_single_file(output):
        if out.suffix.lower() not in (".png", ".npy"):
            raise SuperResolveError(f"--output={out}: {out.suffix} files are not written; name a "
                                    "folder, or a .png / .npy file (with --format=npy)")
        if num_inputs != 1:
            raise SuperResolveError(f"--output={out} is a single file but {num_inputs} inputs "
                                    "were given")
        if out.suffix.lower() != f".{fmt}":
            raise SuperResolveError(f"--output={out} does not end with .{fmt} (--format={fmt})")
        check_output_dir(out.parent if str(out.parent) else ".", "--output's folder")
    else:
        check_output_dir(out, "--output")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def plan_outputs(files: Sequence[Path], output: str, fmt: str, scale: int) -> list[Path]:
    """Output path per input; errors for name clashes and for outputs that are inputs.

    "Is an input" compares file identity (device and inode), so neither a symlink nor a hard
    link to an input can make the program write over it.
    """
    check_output(output, fmt, len(files))
    out = Path(output)
    if _is_single_file(output):
        targets = [out]
    else:
        targets = [out / f"{f.stem}_x{scale}.{fmt}" for f in files]
    seen: set[Path] = set()
    for source, target in zip(files, targets):
        if target.exists():
            clash = next((f for f in files if _same_file(target, f)), None)
            if clash is not None:
                raise SuperResolveError(f"output {target} would overwrite the input {clash}")
        elif target.resolve() in {f.resolve() for f in files}:
            raise SuperResolveError(f"output {target} would overwrite the input {target}")
        if target.resolve() in seen:
            raise SuperResolveError(f"two inputs would both be written to {target} (input {source})")
        seen.add(target.resolve())
    return targets


def atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    """`write(binary file)` into a temporary file beside `path`, then renamed onto `path`.

    The rename is atomic, so `path` holds either its old content or the complete new one, even
    if the process is killed or the disk fills up; the temporary file is removed on failure.
    An existing `path` is replaced as a new file (a hard link to it keeps the old content).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; a normal file respects umask
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


def write_output(path: Path, sr_hxwx3: np.ndarray, fmt: str) -> None:
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from lfcsr_jax import metrics  # pylint: disable=import-outside-toplevel

    if fmt == "npy":
        data = np.asarray(sr_hxwx3, dtype=np.float32)
        atomic_write(path, lambda handle: np.save(handle, data))
    else:
        image = Image.fromarray(np.asarray(metrics.quantize(sr_hxwx3), dtype=np.uint8))
        atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lfcsr_jax.super_resolve",
                                description="Super-resolve images with an LFc-SR export.")
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    p.add_argument("--checkpoint", required=True, help="export directory")
    p.add_argument("--output", required=True, help="output folder, or one .png/.npy file")
    p.add_argument("--alpha", type=float, default=0.0, help="0 = perceptual Y, 1 = objective Y'")
    p.add_argument("--tile", type=int, default=0, help="LR tile size (0 = whole image)")
    p.add_argument("--tile_overlap", type=int, default=32, help="LR pixels shared by neighbours")
    p.add_argument("--tile_mode", default="both", choices=TILE_MODES,
                   help="both: tile both stages (approximate); perceptual: tile only G_P (exact)")
    p.add_argument("--dtype", default="", choices=("",) + DTYPES,
                   help="compute dtype override: " + " | ".join(DTYPES) + " (default: the export's)")
    p.add_argument("--format", default="png", choices=OUTPUT_FORMATS)
    p.add_argument("--fail_fast", action="store_true",
                   help="stop at the first unreadable or unwritable file (default: report it, "
                   "go on with the others, and exit 2 at the end)")
    return p


def run(args: argparse.Namespace) -> list[Path]:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from lfcsr_jax import image_io  # pylint: disable=import-outside-toplevel

    if not 0.0 <= args.alpha <= 1.0:
        raise SuperResolveError(f"--alpha={args.alpha} must lie in [0, 1]")
    if args.tile < 0 or args.tile_overlap < 0 or (args.tile and args.tile_overlap >= args.tile):
        raise SuperResolveError(f"need --tile >= 0 and 0 <= --tile_overlap < --tile, got "
                                f"{args.tile}, {args.tile_overlap}")
    files = collect_inputs(args.inputs)
    check_output(args.output, args.format, len(files))  # before the model is loaded
    model = load_model(args.checkpoint, args.dtype)
    targets = plan_outputs(files, args.output, args.format, model.scale)
    radius = perceptual_receptive_radius(model.config)
    if args.tile and args.tile_mode == "perceptual" and args.tile_overlap < 4 * radius:
        print(f"[super_resolve] note: --tile_overlap={args.tile_overlap} < 4 x G_P's receptive "
              f"radius ({radius} LR px): tiles are not exact", file=sys.stderr)
    written: list[Path] = []
    failed: list[str] = []
    for source, target in tqdm(list(zip(files, targets)), unit="img", file=sys.stderr):
        try:
            lr = image_io.read_image(source)
        except image_io.ImageReadError as e:
            problem = str(e)
        else:
            sr = super_resolve_array(model, lr, args.alpha, args.tile, args.tile_overlap,
                                     args.tile_mode)
            try:
                write_output(target, sr, args.format)
                written.append(target)
                continue
            except OSError as e:
                problem = f"{target}: cannot write ({e.strerror or e})"
        if args.fail_fast:
            raise SuperResolveError(problem)
        print(f"super_resolve: failed: {problem}", file=sys.stderr, flush=True)
        failed.append(str(source))
    if failed:
        raise SuperResolveError(f"written {len(written)}, failed {len(failed)}: "
                                + ", ".join(failed))
    return written


@reports_user_errors("super_resolve")
def main(argv: Sequence[str] | None = None) -> list[Path]:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    from lfcsr_jax import runtime

    runtime.configure()  # GPU runtime settings, before the JAX backend starts
    main()
