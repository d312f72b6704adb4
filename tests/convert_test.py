"""lfcsr_jax.convert: the authors' PyTorch layout -> our params, checked end to end against an
independent PyTorch statement of both generators (tests/torch_pdasr.py, with the authors' key
names), plus the error paths, the file loaders and the CLI."""

from __future__ import annotations


import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from configs import x4  # noqa: E402
from lfcsr_jax import convert
from lfcsr_jax.weights import exports
from lfcsr_jax.weights import state_dicts  # noqa: E402
from lfcsr_jax.models import build_lfcsr  # noqa: E402
from tests.torch_pdasr import (numpy_state_dict, run_nhwc, small_cfg,  # noqa: E402
                               tiny_state_dict, torch_pdasr)

def _rel_err(got, want) -> float:
    """Error relative to the image's variation (the added mean would hide wiring errors)."""
    error = np.linalg.norm(np.asarray(got, np.float64) - want)
    return float(error / np.linalg.norm(want - want.mean()))


def test_pdasr_state_dict_reproduces_the_torch_model():
    model = torch_pdasr((2, 2, 16, 4), (2, 8), seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (2, 6, 10, 3)).astype(np.float32)
    want_objective, want_perceptual = run_nhwc(model, x, torch.float64)
    params = convert.pdasr_params_from_state_dict(numpy_state_dict(model), small_cfg())
    assert set(params) == {"objective", "perceptual"}
    got_objective, got_perceptual = jax.jit(build_lfcsr(small_cfg()).apply)({"params": params}, x)
    assert got_objective.shape == (2, 24, 40, 3)
    assert _rel_err(got_objective, want_objective) < 1e-5
    # G_P gets the torch float64 G_O output as input in torch, ours in JAX: compare end to end.
    assert _rel_err(got_perceptual, want_perceptual) < 1e-5
    # The un-prefixed entry points read the same tensors.
    han_only = {k[2:]: v for k, v in numpy_state_dict(model).items() if k.startswith("D.")}
    np.testing.assert_array_equal(
        convert.han_params_from_state_dict(han_only, small_cfg())["fuse"]["kernel"],
        params["objective"]["fuse"]["kernel"],
    )


def test_layouts_of_the_converted_tensors():
    state_dict = numpy_state_dict(torch_pdasr((2, 2, 16, 4), (2, 8), seed=1))
    params = convert.pdasr_params_from_state_dict(state_dict, small_cfg())
    objective, perceptual = params["objective"], params["perceptual"]
    # OIHW -> HWIO, scanned blocks stacked along leading (group, block) axes.
    np.testing.assert_array_equal(
        objective["groups"]["blocks"]["conv2"]["kernel"][1, 0],
        state_dict["D.body.1.body.0.body.2.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        objective["groups"]["conv"]["bias"][1], state_dict["D.body.1.body.2.bias"]
    )
    assert objective["channel_spatial_attention"]["kernel"].shape == (3, 3, 3, 1, 1)
    assert objective["layer_attention"]["gamma"].shape == ()
    assert objective["layer_attention"]["gamma"] == state_dict["D.la.gamma"][0]
    np.testing.assert_array_equal(
        perceptual["blocks"]["hh1_act"]["slope"][1], state_dict["P.CliqueBlock.1.Fhh1.1.weight"]
    )
    # MeanShift constants are frozen, not params.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    assert not any("mean" in path for path in paths)


def test_converter_names_every_missing_unknown_and_misshaped_key():
    state_dict = tiny_state_dict()
    del state_dict["D.body.1.body.0.body.3.conv_du.2.bias"]
    del state_dict["P.preConv0.weight"]
    state_dict["P.CliqueBlock.0.Fhh2.1.weight"] = np.zeros((5,), np.float32)
    state_dict["D.last.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    state_dict["D.extra.weight"] = np.zeros((1,), np.float32)
    state_dict["S"] = np.zeros((1,), np.float32)
    with pytest.raises(ValueError) as error:
        convert.pdasr_params_from_state_dict(state_dict, x4.get_config("tiny").model)
    message = str(error.value)
    named = ("D.body.1.body.0.body.3.conv_du.2.bias", "P.preConv0.weight",
             "P.CliqueBlock.0.Fhh2.1.weight", "D.last.weight", "D.extra.weight", "S")
    for key in named:
        assert key in message, key
    assert "shape (8, 8, 3, 3), expected (8, 16, 3, 3)" in message
    assert "missing keys (2)" in message and "unknown keys (2)" in message


def test_converter_rejects_a_model_of_another_size_and_another_mean():
    with pytest.raises(ValueError, match="missing keys"):  # tiny weights, paper-size config
        convert.pdasr_params_from_state_dict(tiny_state_dict(), x4.get_config().model)
    cfg = x4.get_config("tiny").model
    cfg.rgb_mean = (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"D\.sub_mean\.bias: MeanShift constant"):
        convert.pdasr_params_from_state_dict(tiny_state_dict(), cfg)


def test_loaders_read_torch_npz_and_safetensors_alike(tmp_path):
    from safetensors.numpy import save_file

    state_dict = tiny_state_dict()
    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    torch.save(tensors, tmp_path / "bare.pt")
    torch.save({"state_dict": tensors, "epoch": 3}, tmp_path / "wrapped.pth")
    np.savez(tmp_path / "weights.npz", **state_dict)
    save_file(state_dict, str(tmp_path / "weights.safetensors"))
    for name in ("bare.pt", "wrapped.pth", "weights.npz", "weights.safetensors"):
        loaded = state_dicts.load_state_dict(tmp_path / name)
        assert sorted(loaded) == sorted(state_dict), name
        for key, value in state_dict.items():
            np.testing.assert_array_equal(loaded[key], value)
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown weight format '.txt'"):
        state_dicts.load_state_dict(tmp_path / "weights.txt")


def test_cli_pdasr_round_trip_through_an_export(tmp_path):
    state_dict = tiny_state_dict()
    np.savez(tmp_path / "model.npz", **state_dict)
    export_dir = tmp_path / "export"
    args = ["pdasr", "--input", str(tmp_path / "model.npz"), "--output", str(export_dir),
            "--config", f"{convert.DEFAULT_CONFIG}:tiny"]
    assert convert.main(args) == 0
    model_cfg, params = exports.load_export(export_dir)
    assert model_cfg["han_features"] == 8 and model_cfg["clique_growth"] == 4
    want = convert.pdasr_params_from_state_dict(state_dict, x4.get_config("tiny").model)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, want)
    # The stored config rebuilds the same network from the plain dict.
    assert build_lfcsr(model_cfg) == build_lfcsr(x4.get_config("tiny").model)
    with pytest.raises(SystemExit, match="already exists"):
        convert.main(args)
    with pytest.raises(SystemExit, match="is the input file"):
        model_npz = str(tmp_path / "model.npz")
        convert.main(["pdasr", "--input", model_npz, "--output", model_npz])


def test_cli_vgg19_torchvision_round_trip(tmp_path):
    from lfcsr_jax.weights import vgg_weights

    rng = np.random.default_rng(0)
    state_dict = {}
    for name, index in vgg_weights.TORCHVISION_CONV_INDEX.items():
        c_in, c_out = vgg_weights.VGG19_CONV_SHAPES[name]
        state_dict[f"features.{index}.weight"] = rng.standard_normal(
            (c_out, c_in, 3, 3)).astype(np.float32)
        state_dict[f"features.{index}.bias"] = rng.standard_normal(c_out).astype(np.float32)
    np.savez(tmp_path / "vgg.npz", **state_dict)
    convert.main(["vgg19", "--input", f"{tmp_path}/vgg.npz", "--output", f"{tmp_path}/out.npz"])
    weights = vgg_weights.load_vgg19_weights(tmp_path / "out.npz")
    assert weights.input_convention == "torchvision"
    params = weights.params
    # OIHW -> HWIO for conv3_4 (torchvision index 16).
    np.testing.assert_array_equal(params["conv3_4"]["kernel"],
                                  state_dict["features.16.weight"].transpose(2, 3, 1, 0))
    with pytest.raises(SystemExit, match="already exists"):
        convert.main(["vgg19", "--input", f"{tmp_path}/vgg.npz", "--output", f"{tmp_path}/out.npz"])
