"""lfcsr_jax.convert: the authors' PyTorch layout -> our params, checked end to end against an
independent PyTorch statement of both generators (written here with the authors' key names),
plus the error paths, the file loaders and the CLI."""

from __future__ import annotations


import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from configs import x4  # noqa: E402
from lfcsr_jax import convert
from lfcsr_jax.weights import exports
from lfcsr_jax.weights import state_dicts  # noqa: E402
from lfcsr_jax.models import build_lfcsr  # noqa: E402

# ----------------------------------------------------------------------------- the torch statement

MEAN = (0.4488, 0.4371, 0.4040)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class _MeanShift(nn.Conv2d):
    def __init__(self, sign: float, rgb_range: float = 255.0):
        super().__init__(3, 3, 1)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(MEAN)
        self.requires_grad_(False)


class _CA(nn.Module):
    def __init__(self, c: int, reduction: int):
        super().__init__()
        squeeze = c // reduction
        self.conv_du = nn.Sequential(
            _conv(c, squeeze, 1), nn.ReLU(), _conv(squeeze, c, 1), nn.Sigmoid()
        )

    def forward(self, x):
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class _RCAB(nn.Module):
    def __init__(self, c: int, reduction: int):
        super().__init__()
        self.body = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), _CA(c, reduction))

    def forward(self, x):
        return x + self.body(x)


class _Group(nn.Module):
    def __init__(self, c: int, reduction: int, blocks: int):
        super().__init__()
        self.body = nn.Sequential(*[_RCAB(c, reduction) for _ in range(blocks)], _conv(c, c))

    def forward(self, x):
        return x + self.body(x)


class _LAM(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):  # (B, N, C, H, W)
        b, n, c, h, w = x.shape
        q = x.reshape(b, n, -1)
        energy = q @ q.transpose(1, 2)
        energy = energy.max(dim=-1, keepdim=True).values - energy
        out = torch.softmax(energy, dim=-1) @ q
        return (self.gamma * out.view(b, n, c, h, w) + x).reshape(b, n * c, h, w)


class _CSAM(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 3, 1, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        mask = torch.sigmoid(self.conv(x.unsqueeze(1))).squeeze(1)
        return x * (self.gamma * mask) + x


class TorchHAN(nn.Module):
    def __init__(self, groups: int, blocks: int, c: int, reduction: int):
        super().__init__()
        self.sub_mean, self.add_mean = _MeanShift(-1.0), _MeanShift(1.0)
        self.head = nn.Sequential(_conv(3, c))
        residual_groups = [_Group(c, reduction, blocks) for _ in range(groups)]
        self.body = nn.Sequential(*residual_groups, _conv(c, c))
        self.csa, self.la = _CSAM(), _LAM()
        self.last_conv = _conv(c * (groups + 1), c)
        self.last = _conv(2 * c, c)
        up = nn.Sequential(_conv(c, 4 * c), nn.PixelShuffle(2), _conv(c, 4 * c), nn.PixelShuffle(2))
        self.tail = nn.Sequential(up, _conv(c, 3))

    def forward(self, x):
        head = self.head(self.sub_mean(x))
        res, stack = head, []
        for layer in self.body:
            res = layer(res)
            stack.insert(0, res)  # newest first, as the authors' torch.cat([res, res1])
        layers = self.last_conv(self.la(torch.stack(stack, dim=1)))
        res = self.last(torch.cat([self.csa(res), layers], dim=1)) + head
        return self.add_mean(self.tail(res))


class _Unit(nn.Sequential):
    def __init__(self, cin: int, g: int):
        super().__init__(_conv(cin, g), nn.PReLU(g))


class _CliqueBlock(nn.Module):
    def __init__(self, g: int):
        super().__init__()
        self.g = g
        self.Fll1, self.Flh1 = _Unit(g, g), _Unit(2 * g, g)
        self.Fhl1, self.Fhh1 = _Unit(2 * g, g), _Unit(4 * g, g)
        self.Fll2, self.Flh2 = _Unit(4 * g, g), _Unit(2 * g, g)
        self.Fhl2, self.Fhh2 = _Unit(2 * g, g), _Unit(g, g)

    def forward(self, x):
        ll0, lh0, hl0, hh0 = torch.split(x, self.g, dim=1)
        ll1 = self.Fll1(ll0)
        lh1 = self.Flh1(torch.cat([ll1, lh0], 1))
        hl1 = self.Fhl1(torch.cat([ll1, hl0], 1))
        hh1 = self.Fhh1(torch.cat([ll1, lh1, hl1, hh0], 1))
        hh2 = self.Fhh2(hh1)
        hl2 = self.Fhl2(torch.cat([hl1, hh2], 1))
        lh2 = self.Flh2(torch.cat([lh1, hh2], 1))
        ll2 = self.Fll2(torch.cat([ll1, lh2, hl2, hh2], 1))
        return torch.cat([ll2, lh2, hl2, hh2], 1) + x


class _WithBody(nn.Module):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return self.body(x)


def haar_dwt_nchw(x):
    """Orthonormal Haar, a = top-left, b = bottom-left, c = top-right, d = bottom-right."""
    a, b = x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2]
    c, d = x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]
    return torch.cat([a + b + c + d, -a - b + c + d, -a + b - c + d, a - b - c + d], 1) / 2


def haar_idwt_nchw(y):
    ll, hl, lh, hh = torch.chunk(y, 4, dim=1)
    n, c, h, w = ll.shape
    out = y.new_zeros(n, c, 2 * h, 2 * w)
    out[:, :, 0::2, 0::2] = (ll - hl - lh + hh) / 2
    out[:, :, 1::2, 0::2] = (ll - hl + lh - hh) / 2
    out[:, :, 0::2, 1::2] = (ll + hl - lh - hh) / 2
    out[:, :, 1::2, 1::2] = (ll + hl + lh + hh) / 2
    return out


class TorchResClique(nn.Module):
    def __init__(self, blocks: int, g: int):
        super().__init__()
        self.sub_mean, self.add_mean = _MeanShift(-1.0), _MeanShift(1.0)
        self.preConv0, self.preConv1 = _conv(12, g), _conv(g, 4 * g)
        self.CliqueBlock = nn.ModuleList([_CliqueBlock(g) for _ in range(blocks)])
        self.funsion = _WithBody(_conv(4 * g * blocks, g, 1), nn.LeakyReLU())
        self.tail = _WithBody(_conv(g, 12))

    def forward(self, x):
        s1 = self.preConv0(haar_dwt_nchw(self.sub_mean(x)))
        feats, outs = self.preConv1(s1), []
        for block in self.CliqueBlock:
            feats = block(feats)
            outs.append(feats)
        y = self.tail(self.funsion(torch.cat(outs, 1)) + s1)
        return self.add_mean(haar_idwt_nchw(y))


class TorchPDASR(nn.Module):
    """The whole two-stage model with the authors' D./P. key prefixes."""

    def __init__(self, han: TorchHAN, clique: TorchResClique):
        super().__init__()
        self.D, self.P = han, clique

    def forward(self, x):
        y0 = self.D(x)
        return y0, self.P(y0)


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Non-default attention gammas and PReLU slopes, so those paths are exercised."""
    torch.manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("gamma"):
            p.data.uniform_(0.2, 0.5)
        elif p.dim() == 1 and ".1.weight" in name:  # PReLU slopes
            p.data.uniform_(0.1, 0.4)
    return module


def run_nhwc(module: nn.Module, x_nhwc, dtype=torch.float32):
    """Applies a torch module to NHWC numpy input; returns NHWC numpy output(s)."""
    module = module.to(dtype)
    with torch.no_grad():
        out = module(torch.from_numpy(x_nhwc).to(dtype).permute(0, 3, 1, 2))
    to_np = lambda t: t.permute(0, 2, 3, 1).double().numpy()  # noqa: E731
    return tuple(to_np(o) for o in out) if isinstance(out, tuple) else to_np(out)


def numpy_state_dict(module: nn.Module) -> dict:
    return {k: v.detach().float().numpy() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- tests

def _small_cfg():
    cfg = x4.get_config().model
    cfg.han_resgroups, cfg.han_resblocks, cfg.han_features, cfg.han_reduction = 2, 2, 16, 4
    cfg.clique_blocks, cfg.clique_growth, cfg.clique_stem = 2, 8, 8
    return cfg


def _torch_pdasr(han: tuple[int, int, int, int], clique: tuple[int, int], seed: int):
    """(groups, blocks, features, reduction), (clique blocks, growth) -> the torch model."""
    torch.manual_seed(seed)
    model = TorchPDASR(TorchHAN(*han), TorchResClique(*clique))
    return randomize_(model.eval(), seed)


def _tiny_state_dict() -> dict:
    """The authors' layout for configs/x4.py:tiny (2 groups x 1 RCAB, 8 features; 1 block, g 4)."""
    return numpy_state_dict(_torch_pdasr((2, 1, 8, 4), (1, 4), seed=3))


def _rel_err(got, want) -> float:
    """Error relative to the image's variation (the added mean would hide wiring errors)."""
    error = np.linalg.norm(np.asarray(got, np.float64) - want)
    return float(error / np.linalg.norm(want - want.mean()))


def test_pdasr_state_dict_reproduces_the_torch_model():
    model = _torch_pdasr((2, 2, 16, 4), (2, 8), seed=0)
    x = np.random.default_rng(0).uniform(0, 255, (2, 6, 10, 3)).astype(np.float32)
    want_objective, want_perceptual = run_nhwc(model, x, torch.float64)
    params = convert.pdasr_params_from_state_dict(numpy_state_dict(model), _small_cfg())
    assert set(params) == {"objective", "perceptual"}
    got_objective, got_perceptual = jax.jit(build_lfcsr(_small_cfg()).apply)({"params": params}, x)
    assert got_objective.shape == (2, 24, 40, 3)
    assert _rel_err(got_objective, want_objective) < 1e-5
    # G_P gets the torch float64 G_O output as input in torch, ours in JAX: compare end to end.
    assert _rel_err(got_perceptual, want_perceptual) < 1e-5
    # The un-prefixed entry points read the same tensors.
    han_only = {k[2:]: v for k, v in numpy_state_dict(model).items() if k.startswith("D.")}
    np.testing.assert_array_equal(
        convert.han_params_from_state_dict(han_only, _small_cfg())["fuse"]["kernel"],
        params["objective"]["fuse"]["kernel"],
    )


def test_layouts_of_the_converted_tensors():
    state_dict = numpy_state_dict(_torch_pdasr((2, 2, 16, 4), (2, 8), seed=1))
    params = convert.pdasr_params_from_state_dict(state_dict, _small_cfg())
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
    state_dict = _tiny_state_dict()
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
        convert.pdasr_params_from_state_dict(_tiny_state_dict(), x4.get_config().model)
    cfg = x4.get_config("tiny").model
    cfg.rgb_mean = (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"D\.sub_mean\.bias: MeanShift constant"):
        convert.pdasr_params_from_state_dict(_tiny_state_dict(), cfg)


def test_loaders_read_torch_npz_and_safetensors_alike(tmp_path):
    from safetensors.numpy import save_file

    state_dict = _tiny_state_dict()
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
    state_dict = _tiny_state_dict()
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
