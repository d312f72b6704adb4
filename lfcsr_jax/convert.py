"""Weight import: the authors' PyTorch PDASR model -> our generator params; VGG19 -> our VGG19.

  python -m lfcsr_jax.convert pdasr --input model_best.pt --output EXPORT_DIR [--config configs/x4.py]
  python -m lfcsr_jax.convert vgg19 --input vgg19-dcbb9e9d.pth --output vgg19.npz

The PDASR state_dict holds the whole two-stage model: `D.*` = HAN (G_O), `P.*` = Res-clique (G_P).
Every key is accounted for: missing, unknown and mis-shaped keys all raise one ValueError that
names each of them. The MeanShift constants (`sub_mean`, `add_mean`) are frozen in our networks;
they are checked against the configured mean and not imported.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np

from lfcsr_jax.models import generator

StateDict = Mapping[str, Any]
Params = dict[str, Any]

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "x4.py"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


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


def _conv_rules(torch_prefix: str, path: tuple[str, ...], index: tuple[int, ...] = ()) -> Iterator[tuple[str, Rule]]:
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
            rules.update(_conv_rules(f"{block}.0", ours + ("conv1",), (g, r)))
            rules.update(_conv_rules(f"{block}.2", ours + ("conv2",), (g, r)))
            rules.update(_conv_rules(f"{block}.3.conv_du.0", ours + ("attention", "squeeze"), (g, r)))
            rules.update(_conv_rules(f"{block}.3.conv_du.2", ours + ("attention", "excite"), (g, r)))
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

def _param_shapes(module: Any, input_shape: tuple[int, ...]) -> Params:
    shapes = jax.eval_shape(lambda k: generator.init_params(module, k, input_shape), jax.random.key(0))
    return jax.tree_util.tree_map(lambda s: tuple(s.shape), shapes, is_leaf=lambda s: hasattr(s, "shape"))


def _leaf(tree: Params, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _mean_shift_problems(state_dict: StateDict, prefix: str, module: Any) -> tuple[list[str], list[str]]:
    """Checks the frozen MeanShift convs; returns (missing keys, bad-value messages)."""
    missing, bad = [], []
    mean = np.asarray(module.rgb_mean, np.float64) * module.rgb_range
    for name, sign in (("sub_mean", -1.0), ("add_mean", 1.0)):
        expected = {
            f"{prefix}{name}.weight": np.eye(3).reshape(3, 3, 1, 1),
            f"{prefix}{name}.bias": sign * mean,
        }
        for key, want in expected.items():
            if key not in state_dict:
                missing.append(key)
                continue
            got = np.asarray(state_dict[key], np.float64)
            if got.shape != want.shape or not np.allclose(got, want, rtol=1e-5, atol=1e-3):
                bad.append(
                    f"{key}: MeanShift constant {got.ravel().tolist()} does not match the configured "
                    f"rgb_mean={tuple(module.rgb_mean)}, rgb_range={module.rgb_range} "
                    f"(expected {want.ravel().tolist()})"
                )
    return missing, bad


def _convert(
    state_dict: StateDict, prefix: str, module: Any, rules: dict[str, Rule], input_shape: tuple[int, ...]
) -> tuple[Params, list[str], list[str], list[str]]:
    """Fills our params from `prefix`+key entries; returns (params, missing, shape errors, bad values)."""
    shapes = _param_shapes(module, input_shape)
    params = jax.tree_util.tree_map(
        lambda s: np.zeros(s, np.float32), shapes, is_leaf=lambda s: isinstance(s, tuple)
    )
    missing, wrong_shape = [], []
    for torch_key, (path, index, kind) in rules.items():
        key = prefix + torch_key
        target = _leaf(params, path)
        slot_shape = target.shape[len(index):]
        want = _TORCH_SHAPE[kind](slot_shape)
        if key not in state_dict:
            missing.append(key)
            continue
        value = np.asarray(state_dict[key], dtype=np.float32)
        if value.shape != want:
            wrong_shape.append(f"{key}: shape {value.shape}, expected {want}")
            continue
        target[index] = _TO_OURS[kind](value)
    ms_missing, bad = _mean_shift_problems(state_dict, prefix, module)
    # Every leaf of our tree must be covered by exactly the rules above (a layout bug otherwise).
    covered = {path for path, _, _ in rules.values()}
    flat, _ = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda s: isinstance(s, tuple))
    leaves = {tuple(k.key for k in p) for p, _ in flat}
    if covered != leaves:
        raise AssertionError(f"convert.py layout bug: unmapped {leaves - covered}, stray {covered - leaves}")
    return params, missing + ms_missing, wrong_shape, bad


def _expected_keys(prefix: str, rules: dict[str, Rule]) -> set[str]:
    fixed = {f"{prefix}{m}.{p}" for m in ("sub_mean", "add_mean") for p in ("weight", "bias")}
    return {prefix + k for k in rules} | fixed


def _raise_if_problems(where: str, missing: list[str], unknown: list[str], wrong: list[str], bad: list[str]) -> None:
    if not (missing or unknown or wrong or bad):
        return
    lines = [f"{where}: the state_dict does not match the configured model"]
    if missing:
        lines.append(f"missing keys ({len(missing)}): " + ", ".join(sorted(missing)))
    if unknown:
        lines.append(f"unknown keys ({len(unknown)}): " + ", ".join(sorted(unknown)))
    if wrong:
        lines.append(f"wrong shapes ({len(wrong)}): " + "; ".join(wrong))
    if bad:
        lines.append("bad constants: " + "; ".join(bad))
    raise ValueError("\n  ".join(lines))


def _stage(state_dict: StateDict, prefix: str, which: str, model_cfg: Any) -> tuple[tuple, set[str]]:
    """Converts one stage; returns ((params, missing, wrong shapes, bad values), expected keys)."""
    if which == "objective":
        module = generator.build_objective(model_cfg)
        rules = _han_rules(module)
    else:
        module = generator.build_perceptual(model_cfg)
        rules = _resclique_rules(module)
    return _convert(state_dict, prefix, module, rules, (1, 8, 8, 3)), _expected_keys(prefix, rules)


def han_params_from_state_dict(state_dict: StateDict, model_cfg: Any) -> Params:
    """Our HAN params from the authors' HAN state_dict (keys without the `D.` prefix)."""
    (params, missing, wrong, bad), expected = _stage(state_dict, "", "objective", model_cfg)
    unknown = [k for k in state_dict if k not in expected]
    _raise_if_problems("HAN", missing, unknown, wrong, bad)
    return params


def resclique_params_from_state_dict(state_dict: StateDict, model_cfg: Any) -> Params:
    """Our Res-clique params from the authors' CliqueNet state_dict (keys without the `P.` prefix)."""
    (params, missing, wrong, bad), expected = _stage(state_dict, "", "perceptual", model_cfg)
    unknown = [k for k in state_dict if k not in expected]
    _raise_if_problems("Res-clique", missing, unknown, wrong, bad)
    return params


def pdasr_params_from_state_dict(state_dict: StateDict, model_cfg: Any) -> Params:
    """{'objective', 'perceptual'} params from the authors' whole SRADMM state_dict (D.*, P.*)."""
    (objective, m_o, w_o, b_o), expected_o = _stage(state_dict, "D.", "objective", model_cfg)
    (perceptual, m_p, w_p, b_p), expected_p = _stage(state_dict, "P.", "perceptual", model_cfg)
    unknown = [k for k in state_dict if k not in expected_o and k not in expected_p]
    _raise_if_problems("PDASR", m_o + m_p, unknown, w_o + w_p, b_o + b_p)
    return {"objective": objective, "perceptual": perceptual}


# ----------------------------------------------------------------------------- loaders

def _unwrap(checkpoint: Any, path: Path) -> Mapping[str, Any]:
    """A bare state_dict, or one nested under 'state_dict' / 'model' (training checkpoints)."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(checkpoint).__name__}")
    for wrapper in ("state_dict", "model"):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return checkpoint


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a state_dict as numpy arrays: .pt/.pth (torch, imported lazily), .npz or .safetensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        try:
            import torch  # Only this format needs torch.
        except ImportError as e:
            raise ImportError(f"{path}: reading PyTorch files needs torch; convert to .npz/.safetensors elsewhere") from e
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return {
            str(k): (v.detach().cpu().float().numpy() if isinstance(v, torch.Tensor) else v)
            for k, v in _unwrap(checkpoint, path).items()
        }
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(str(path)))
    raise ValueError(f"{path}: unknown weight format {suffix!r}; expected one of {TORCH_SUFFIXES + ('.npz', '.safetensors')}")


def load_model_config(spec: str | os.PathLike) -> Any:
    """`config.model` of a config file, written `path.py` or `path.py:variant` (ml_collections style)."""
    spec = str(spec)
    file, _, variant = spec.partition(":")
    path = Path(file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    module_spec = importlib.util.spec_from_file_location(f"_lfcsr_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(variant).model


# ----------------------------------------------------------------------------- CLI

def _check_output(output: Path, inputs: Path) -> None:
    if output.resolve() == inputs.resolve():
        raise SystemExit(f"error: --output {output} is the input file; refusing to write over it")
    if output.exists():
        raise SystemExit(f"error: --output {output} already exists; refusing to overwrite it")


def convert_pdasr(input_path: str | os.PathLike, output_dir: str | os.PathLike, config: str | os.PathLike = DEFAULT_CONFIG) -> Path:
    """Authors' checkpoint -> an lfcsr_jax export directory (checkpointing.save_export)."""
    from lfcsr_jax import checkpointing

    input_path, output_dir = Path(input_path), Path(output_dir)
    _check_output(output_dir, input_path)
    model_cfg = load_model_config(config)
    params = pdasr_params_from_state_dict(load_state_dict(input_path), model_cfg)
    model_dict = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    extra = {"converted_from": str(input_path.resolve()), "converter": "lfcsr_jax.convert pdasr"}
    return checkpointing.save_export(output_dir, params, model_dict, extra_info=extra)


def convert_vgg19(input_path: str | os.PathLike, output_path: str | os.PathLike) -> Path:
    """torchvision .pth or Keras .h5/.keras VGG19 -> our VGG19 params file (lfcsr_jax.vgg_weights)."""
    from lfcsr_jax import vgg_weights  # Written separately; imported only when this runs.

    input_path, output_path = Path(input_path), Path(output_path)
    _check_output(output_path, input_path)
    if input_path.suffix.lower() in (".h5", ".keras"):
        params = vgg_weights.vgg19_params_from_keras(str(input_path))
    else:
        params = vgg_weights.vgg19_params_from_torchvision(load_state_dict(input_path))
    vgg_weights.save_vgg19_params(output_path, params)
    return output_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lfcsr_jax.convert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pdasr = commands.add_parser("pdasr", help="authors' PyTorch LFc-SR model -> generator export dir")
    pdasr.add_argument("--input", required=True, help=".pt/.pth/.npz/.safetensors state_dict (D.*, P.*)")
    pdasr.add_argument("--output", required=True, help="export directory to create (must not exist)")
    pdasr.add_argument("--config", default=str(DEFAULT_CONFIG), help="config file[:variant] (default %(default)s)")
    vgg = commands.add_parser("vgg19", help="ImageNet VGG19 (torchvision .pth or Keras .h5) -> params file")
    vgg.add_argument("--input", required=True)
    vgg.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    if args.command == "pdasr":
        written = convert_pdasr(args.input, args.output, args.config)
    else:
        written = convert_vgg19(args.input, args.output)
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
