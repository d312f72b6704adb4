"""Every value a training run depends on, checked before any compute: one UserError naming each
bad field (and its remedy) instead of a traceback after the first compile."""

from __future__ import annotations

import functools

import jax
import ml_collections
from PIL import Image

from lfcsr_jax import configuration, paths
from lfcsr_jax.errors import UserError
from lfcsr_jax.evaluation import lpips
from lfcsr_jax.input import image_io
from lfcsr_jax.weights import vgg_weights


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the run depends on; raises UserError naming the field."""
    problems: list[str] = []
    model, inp, train = config.model, config.input, config.train
    if model.scale != 4:
        problems.append(f"model.scale={model.scale}: LFc-SR is defined for x4 only")
    hr_patch = inp.lr_patch * model.scale
    if inp.lr_patch <= 0 or hr_patch % 8:
        problems.append(
            f"input.lr_patch={inp.lr_patch}: the HR patch (lr_patch*scale={hr_patch}) must be a "
            "positive multiple of 8 (two Haar levels and three stride-2 discriminator convs)")
    problems += configuration.enum_problems(config)
    problems += _check_vgg_input(config.loss)
    unknown_phases = [p for p in train.phases if p not in configuration.PHASES]
    if unknown_phases or not train.phases:
        problems.append(f"train.phases={tuple(train.phases)}: expected a non-empty subset of "
                        f"{configuration.PHASES}")
    batch = train.global_batch_size
    devices, processes = jax.device_count(), jax.process_count()
    if batch <= 0:
        problems.append(f"train.global_batch_size={batch} must be positive")
    elif batch % devices or batch % processes:
        problems.append(f"train.global_batch_size={batch} must be divisible by the device count "
                        f"({devices}) and the process count ({processes})")
    problems += _check_input_paths(inp)
    for field, path in (("loss.vgg_weights", config.loss.vgg_weights),
                        ("train.init_checkpoint", train.init_checkpoint),
                        ("train.lpips_dir", train.lpips_dir)):
        if path and not paths.location(path).exists():
            problems.append(f"{field}={path!r}: no such file or directory")
    problems += _check_weight_paths(config)
    if train.lpips_dir and paths.location(train.lpips_dir).is_dir():
        try:
            lpips.find_lpips_files(train.lpips_dir)
        except lpips.MetricUnavailable as missing:
            problems.append(f"train.lpips_dir: {missing}")
    for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                  "image_every_steps", "keep_checkpoints"):
        if train[field] <= 0:
            problems.append(f"train.{field}={train[field]} must be positive")
    if not problems:
        problems += _check_training_images(inp)  # reads files: only once the rest is sound
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))


def _check_weight_paths(config: ml_collections.ConfigDict) -> list[str]:
    """vgg_weights must be a convert-vgg19 .npz; init_checkpoint an export, not a workdir."""
    problems = []
    vgg_text, init_text = config.loss.vgg_weights, config.train.init_checkpoint
    vgg = paths.location(vgg_text) if vgg_text else None
    init = paths.location(init_text) if init_text else None
    if vgg is not None and vgg.exists() and (vgg.is_dir() or vgg.suffix != ".npz"):
        problems.append(f"loss.vgg_weights={vgg_text!r}: expected the .npz written by "
                        "`python -m lfcsr_jax.convert vgg19 --input ... --output vgg19.npz`")
    if init is not None and init.exists():
        if (init / "export" / "config.json").is_file() or (init / "checkpoints").is_dir():
            problems.append(f"train.init_checkpoint={str(init)!r} is a training workdir; pass "
                            f"its export, {str(init / 'export')!r}")
        elif not (init / "config.json").is_file():
            problems.append(f"train.init_checkpoint={str(init)!r}: not an export directory (no "
                            "config.json; see exports.save_export / convert pdasr)")
    return problems


def _check_training_images(inp: ml_collections.ConfigDict) -> list[str]:
    """Names a truncated or unreadable image file in the folders before the ~30 s of set-up.

    PIL's verify() reads every chunk and checks the PNG CRCs without decoding pixels, so a
    truncated file is found at a fraction of the cost of the decode that follows.
    """
    folders = [inp[f] for f in ("hr_dir", "lr_dir", "val_hr_dir", "val_lr_dir")
               if inp.source in ("folder", "paired") and inp[f]
               and paths.location(inp[f]).is_dir()]
    return [problem for folder in folders for problem in _unreadable_images(str(folder))]


@functools.lru_cache(maxsize=16)  # a folder is verified once per process
def _unreadable_images(folder: str) -> tuple[str, ...]:
    try:
        files = image_io.list_images(folder)
    except FileNotFoundError as e:
        return (str(e),)
    problems = []
    for path in files:
        try:
            with paths.location(path).open("rb") as handle, Image.open(handle) as img:
                img.verify()
        except Exception as e:  # noqa: BLE001 (PIL raises many types for broken files)
            problems.append(f"{path}: unreadable or truncated image ({type(e).__name__}: "
                            f"{e}); fix or remove it")
    return tuple(problems)


def _check_vgg_input(loss: ml_collections.ConfigDict) -> list[str]:
    """The scaling must exist and suit the input convention the weights file stores."""
    if loss.vgg_input_scaling not in configuration.VGG_INPUT_SCALINGS:
        return [f"loss.vgg_input_scaling={loss.vgg_input_scaling!r}: expected one of "
                f"{configuration.VGG_INPUT_SCALINGS}"]
    if not loss.vgg_weights or not paths.location(loss.vgg_weights).is_file():
        return []  # random weights are fed as 'torchvision'; a missing file is reported below
    try:
        convention = vgg_weights.read_vgg19_input_convention(loss.vgg_weights)
    except ValueError as error:
        return [f"loss.vgg_weights: {error}"]
    if loss.vgg_input_scaling == "reference" and convention != "torchvision":
        return [f"loss.vgg_input_scaling='reference' (0-255 values into torchvision's 0-1 "
                f"statistics, as the authors' code) cannot feed {loss.vgg_weights!r}, whose "
                f"weights expect the {convention!r} input convention: use 'as_weights'"]
    return []


def _check_input_paths(inp: ml_collections.ConfigDict) -> list[str]:
    if inp.source not in configuration.INPUT_SOURCES:
        return [f"input.source={inp.source!r}: expected one of {configuration.INPUT_SOURCES}"]
    needed = {"folder": ("hr_dir",), "paired": ("hr_dir", "lr_dir")}.get(inp.source, ())
    problems = []
    for field in needed:
        if not inp[field]:
            problems.append(f"input.{field} must be set for input.source={inp.source!r}")
        elif not paths.location(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    for field in ("val_hr_dir", "val_lr_dir"):
        if inp[field] and not paths.location(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    return problems
