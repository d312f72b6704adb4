"""Weight import: the authors' PyTorch PDASR model -> our generator params; VGG19 -> our VGG19.

  python -m lfcsr_jax.convert pdasr --input model.pt --output EXPORT_DIR [--config CFG.py[:arg]]
  python -m lfcsr_jax.convert vgg19 --input vgg19-dcbb9e9d.pth --output vgg19.npz

The PDASR state_dict holds the whole two-stage model: `D.*` = HAN (G_O), `P.*` = Res-clique (G_P).
Every key is accounted for: missing, unknown and mis-shaped keys all raise one ConvertError (a
ValueError) that counts each kind and names the first few of each. A file that is not a state
dict, a wrong --output and the like end the command with one `convert: error: ...` line (exit 2). The MeanShift constants (`sub_mean`, `add_mean`) are frozen in our networks;
they are checked against the configured mean and not imported.

--input and --output may be local paths or gs:// URIs (lfcsr_jax.paths); --config is a local
Python file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.configuration import load_config_file
from lfcsr_jax.errors import UserError, reports_user_errors
from lfcsr_jax.models import generator
from lfcsr_jax.weights.state_dicts import load_state_dict

StateDict = Mapping[str, Any]
Params = dict[str, Any]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "x4.py"
SHOWN_KEYS = 8  # names listed per kind of problem; the rest are counted


class ConvertError(UserError):
    """A weights file or an output that cannot be used; the message names the file."""


def _some(names: list[str], sep: str = ", ") -> str:
    shown = sep.join(names[:SHOWN_KEYS])
    return shown + (f", ... and {len(names) - SHOWN_KEYS} more" if len(names) > SHOWN_KEYS else "")


# ----------------------------------------------------------------------------- layouts

# A rule maps one PyTorch key to a slot of our params: (flax path, index into the stacked
# scan axes, kind). Kinds say how the PyTorch tensor is laid out relative to ours.
_TO_OURS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: w.transpose(2, 3, 1, 0),  # OIHW -> HWIO
    "conv3d": lambda w: w.transpose(2, 3, 4, 1, 0),  # OIDHW -> DHWIO
    "vector": lambda v: v,
    "scalar": lambda v: v.reshape(()),  # nn.Parameter(torch.zeros(1)) -> ()
}
_TORCH_SHAPE: dict[str, Callable[[tuple[int, ...]], tuple[int, ...]]] = {
    "conv": lambda s: (s[3], s[2], s[0], s[1]),
    "conv3d": lambda s: (s[4], s[3], s[0], s[1], s[2]),
    "vector": lambda s: tuple(s),
    "scalar": lambda s: (1,),
}

Rule = tuple[tuple[str, ...], tuple[int, ...], str]


def _conv_rules(
    torch_prefix: str, path: tuple[str, ...], index: tuple[int, ...] = ()
) -> Iterator[tuple[str, Rule]]:
    yield f"{torch_prefix}.weight", (path + ("kernel",), index, "conv")
    yield f"{torch_prefix}.bias", (path + ("bias",), index, "vector")


def _han_rules(han: generator.HAN) -> dict[str, Rule]:
    """PyTorch key -> slot, for the authors' model/han.py layout."""
    rules: dict[str, Rule] = {}
    rules.update(_conv_rules("head.0", ("head",)))
    for g in range(han.n_resgroups):
        for r in range(han.n_resblocks):
            block = f"body.{g}.body.{r}.body"
            ours = ("groups", "blocks")
            attention = ours + ("attention",)
            rules.update(_conv_rules(f"{block}.0", ours + ("conv1",), (g, r)))
            rules.update(_conv_rules(f"{block}.2", ours + ("conv2",), (g, r)))
            rules.update(_conv_rules(f"{block}.3.conv_du.0", attention + ("squeeze",), (g, r)))
            rules.update(_conv_rules(f"{block}.3.conv_du.2", attention + ("excite",), (g, r)))
        rules.update(_conv_rules(f"body.{g}.body.{han.n_resblocks}", ("groups", "conv"), (g,)))
    rules.update(_conv_rules(f"body.{han.n_resgroups}", ("body_conv",)))
    csam = ("channel_spatial_attention",)
    rules["csa.gamma"] = (csam + ("gamma",), (), "scalar")
    rules["csa.conv.weight"] = (csam + ("kernel",), (), "conv3d")
    rules["csa.conv.bias"] = (csam + ("bias",), (), "vector")
    rules["la.gamma"] = (("layer_attention", "gamma"), (), "scalar")
    rules.update(_conv_rules("last_conv", ("layer_fuse",)))
    rules.update(_conv_rules("last", ("fuse",)))
    n_upsample = 1 if han.scale == 3 else int(np.log2(han.scale))
    for i in range(n_upsample):  # EDSR Upsampler: [conv, PixelShuffle] pairs -> indices 0, 2, ...
        rules.update(_conv_rules(f"tail.0.{2 * i}", (f"upsample{i}",)))
    rules.update(_conv_rules("tail.1", ("tail",)))
    return rules


_CLIQUE_UNITS = ("ll1", "lh1", "hl1", "hh1", "ll2", "lh2", "hl2", "hh2")


def _resclique_rules(net: generator.ResClique) -> dict[str, Rule]:
    """PyTorch key -> slot, for the authors' model/cliquenet.py layout."""
    rules: dict[str, Rule] = {}
    rules.update(_conv_rules("preConv0", ("stem",)))
    rules.update(_conv_rules("preConv1", ("expand",)))
    for n in range(net.n_blocks):
        for unit in _CLIQUE_UNITS:
            torch_unit = f"CliqueBlock.{n}.F{unit}"
            rules.update(_conv_rules(f"{torch_unit}.0", ("blocks", f"{unit}_conv"), (n,)))
            rules[f"{torch_unit}.1.weight"] = (("blocks", f"{unit}_act", "slope"), (n,), "vector")
    rules.update(_conv_rules("funsion.body.0", ("fuse",)))
    rules.update(_conv_rules("tail.body.0", ("tail",)))
    return rules


# ----------------------------------------------------------------------------- conversion

@dataclasses.dataclass
class _Problems:
    """Everything wrong with a state_dict, collected so that one error names all of it."""

    missing: list[str] = dataclasses.field(default_factory=list)
    unknown: list[str] = dataclasses.field(default_factory=list)
    wrong_shape: list[str] = dataclasses.field(default_factory=list)
    bad_value: list[str] = dataclasses.field(default_factory=list)

    def raise_if_any(self, where: str) -> None:
        if not (self.missing or self.unknown or self.wrong_shape or self.bad_value):
            return
        # A state_dict of another network has thousands of keys: count them, name a few.
        parts = [f"{where}: the state_dict does not match the configured model"]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): " + _some(sorted(self.missing)))
        if self.unknown:
            parts.append(f"unknown keys ({len(self.unknown)}): " + _some(sorted(self.unknown)))
        if self.wrong_shape:
            parts.append(f"wrong shapes ({len(self.wrong_shape)}): "
                         + _some(self.wrong_shape, "; "))
        if self.bad_value:
            parts.append("bad constants: " + "; ".join(self.bad_value))
        raise ConvertError("; ".join(parts) + " (is --config the model these weights are for?)")


def _is_shape(s: Any) -> bool:
    return isinstance(s, tuple)


def _param_shapes(module: Any) -> Params:
    shapes = jax.eval_shape(
        lambda k: generator.init_params(module, k, (1, 8, 8, 3)), jax.random.key(0)
    )
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes)


def _leaf(tree: Params, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _check_mean_shift(state_dict: StateDict, prefix: str, module: Any, problems: _Problems) -> None:
    """The frozen MeanShift 1x1 convs must be identity + the configured mean on the 0-255 scale."""
    mean = np.asarray(module.rgb_mean, np.float64) * module.rgb_range
    for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
        expected = {
            f"{prefix}{name}.weight": np.eye(3).reshape(3, 3, 1, 1),
            f"{prefix}{name}.bias": sign * mean,
        }
        for key, want in expected.items():
            if key not in state_dict:
                problems.missing.append(key)
                continue
            got = np.asarray(state_dict[key], np.float64)
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-3):
                problems.bad_value.append(
                    f"{key}: MeanShift constant {got.ravel().tolist()} does not match "
                    f"rgb_mean={tuple(module.rgb_mean)}, rgb_range={module.rgb_range} "
                    f"(expected {want.ravel().tolist()})"
                )


def _convert_stage(
    state_dict: StateDict, prefix: str, module: Any, rules: dict[str, Rule], problems: _Problems
) -> tuple[Params, set[str]]:
    """Fills `module`'s params from the `prefix`+key entries; returns (params, keys it reads)."""
    shapes = _param_shapes(module)
    params = jax.tree_util.tree_map(lambda s: np.zeros(s, np.float32), shapes, is_leaf=_is_shape)
    for torch_key, (path, index, kind) in rules.items():
        key = prefix + torch_key
        target = _leaf(params, path)
        want_shape = _TORCH_SHAPE[kind](target.shape[len(index) :])
        if key not in state_dict:
            problems.missing.append(key)
            continue
        value = np.asarray(state_dict[key], dtype=np.float32)
        if value.shape != want_shape:
            problems.wrong_shape.append(f"{key}: shape {value.shape}, expected {want_shape}")
            continue
        target[index] = _TO_OURS[kind](value)
    _check_mean_shift(state_dict, prefix, module, problems)
    # The rules must cover every leaf of our tree exactly (a bug in this file otherwise).
    covered = {path for path, _, _ in rules.values()}
    flat, _ = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    leaves = {tuple(k.key for k in p) for p, _ in flat}
    if covered != leaves:
        raise AssertionError(f"convert.py: unmapped {leaves - covered}, stray {covered - leaves}")
    fixed = {f"{prefix}{m}.{p}" for m in ("sub_mean", "add_mean") for p in ("weight", "bias")}
    return params, {prefix + k for k in rules} | fixed


def _objective(state_dict: StateDict, prefix: str, model_cfg: Any, problems: _Problems):
    han = generator.build_objective(model_cfg)
    return _convert_stage(state_dict, prefix, han, _han_rules(han), problems)


def _perceptual(state_dict: StateDict, prefix: str, model_cfg: Any, problems: _Problems):
    net = generator.build_perceptual(model_cfg)
    return _convert_stage(state_dict, prefix, net, _resclique_rules(net), problems)


def _unknown(state_dict: StateDict, expected: set[str]) -> list[str]:
    return [k for k in state_dict if k not in expected]


def han_params_from_state_dict(state_dict: StateDict, model_cfg: Any) -> Params:
    """Our HAN params from the authors' HAN state_dict (keys without the `D.` prefix)."""
    problems = _Problems()
    params, expected = _objective(state_dict, "", model_cfg, problems)
    problems.unknown = _unknown(state_dict, expected)
    problems.raise_if_any("HAN")
    return params


def resclique_params_from_state_dict(state_dict: StateDict, model_cfg: Any) -> Params:
    """Our Res-clique params from the authors' CliqueNet state_dict (no `P.` prefix)."""
    problems = _Problems()
    params, expected = _perceptual(state_dict, "", model_cfg, problems)
    problems.unknown = _unknown(state_dict, expected)
    problems.raise_if_any("Res-clique")
    return params


def pdasr_params_from_state_dict(state_dict: StateDict, model_cfg: Any) -> Params:
    """{'objective', 'perceptual'} params from the authors' whole SRADMM state_dict (D.*, P.*)."""
    problems = _Problems()
    objective, expected_d = _objective(state_dict, "D.", model_cfg, problems)
    perceptual, expected_p = _perceptual(state_dict, "P.", model_cfg, problems)
    problems.unknown = _unknown(state_dict, expected_d | expected_p)
    problems.raise_if_any("PDASR")
    return {"objective": objective, "perceptual": perceptual}


# ----------------------------------------------------------------------------- loaders

def _read_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """state_dicts.load_state_dict with its errors as one-line ConvertErrors naming the file."""
    try:
        return load_state_dict(path)
    except (OSError, ValueError, ImportError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(first[:300]) from e


# ----------------------------------------------------------------------------- CLI

def _check_output(output: paths.Path, source: paths.Path) -> None:
    if paths.same_location(output, source):
        raise ConvertError(f"--output {output} is the input file; refusing to write over it")
    if output.exists():
        raise ConvertError(f"--output {output} already exists; refusing to overwrite it")
    if paths.is_remote(output):
        # gs:// has no folders to walk up (and above the bucket, epath's parent leaves the URI):
        # only an object right at the parent's name would make the write impossible.
        if output.parent.is_file():
            raise ConvertError(f"--output {output}: {output.parent} is a file, not a folder")
        return
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConvertError(f"--output {output}: {parent} is a file, not a folder")


def convert_pdasr(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: str | os.PathLike = DEFAULT_CONFIG,
) -> paths.Path:
    """Authors' checkpoint -> an lfcsr_jax export directory (exports.save_export)."""
    from lfcsr_jax.weights import exports

    input_path, output_dir = paths.location(input_path), paths.location(output_dir)
    _check_output(output_dir, input_path)
    model_cfg = load_config_file(config).model
    params = pdasr_params_from_state_dict(_read_state_dict(input_path), model_cfg)
    model_dict = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    source = str(input_path) if paths.is_remote(input_path) else str(input_path.resolve())
    extra = {"converted_from": source, "converter": "lfcsr_jax.convert pdasr"}
    return exports.save_export(output_dir, params, model_dict, extra_info=extra)


def convert_vgg19(input_path: str | os.PathLike, output_path: str | os.PathLike) -> paths.Path:
    """torchvision .pth or Keras .h5/.keras VGG19 -> our params file (via lfcsr_jax.weights.vgg_weights)."""
    from lfcsr_jax.weights import vgg_weights  # Written separately; needed only by this command.

    input_path, output_path = paths.location(input_path), paths.location(output_path)
    if output_path.suffix.lower() != ".npz":
        # np.savez would silently add .npz, and training reads the file only under that name.
        raise ConvertError(f"--output {output_path}: must end with .npz (e.g. "
                           f"{output_path.with_name(output_path.name + '.npz')})")
    _check_output(output_path, input_path)
    # Keras weights come from Caffe and expect BGR-mean-subtracted input: the convention is
    # stored beside the params so the loss preprocesses correctly.
    try:
        weights = vgg_weights.load_vgg19_weights(input_path)
    except (OSError, ValueError) as e:  # vgg_weights' messages name the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(first) from e
    if not paths.is_remote(output_path):  # _check_output allowed folders still to be created
        output_path.parent.mkdir(parents=True, exist_ok=True)
    vgg_weights.save_vgg19_params(output_path, weights.params, weights.input_convention)
    return output_path


@reports_user_errors("convert")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lfcsr_jax.convert", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = parser.add_subparsers(dest="command", required=True)
    pdasr = commands.add_parser("pdasr", help="authors' PyTorch model -> generator export dir")
    pdasr.add_argument("--input", required=True, help=".pt/.pth/.npz/.safetensors (D.*, P.*)")
    pdasr.add_argument("--output", required=True, help="export directory to create (new)")
    pdasr.add_argument("--config", default=str(DEFAULT_CONFIG), help="config.py[:variant]")
    vgg = commands.add_parser("vgg19", help="VGG19 (torchvision .pth / Keras .h5) -> params file")
    vgg.add_argument("--input", required=True)
    vgg.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    from lfcsr_jax import object_store

    object_store.check_locations([("--input", args.input, True), ("--output", args.output, False)])
    if args.command == "pdasr":
        written = convert_pdasr(args.input, args.output, args.config)
    else:
        written = convert_vgg19(args.input, args.output)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
