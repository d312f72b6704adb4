"""An independent PyTorch statement of both generators of LFc-SR, written here with the authors'
key names (HAN as `D.*`, the Res-clique net as `Pnet.*`), for the converter tests
(tests/convert_test.py, tests/gcs_inference_test.py). A helper module, not a test file: import it
only after `pytest.importorskip("torch")`."""

from __future__ import annotations

import torch
from torch import nn

from configs import x4


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

def small_cfg():
    cfg = x4.get_config().model
    cfg.han_resgroups, cfg.han_resblocks, cfg.han_features, cfg.han_reduction = 2, 2, 16, 4
    cfg.clique_blocks, cfg.clique_growth, cfg.clique_stem = 2, 8, 8
    return cfg


def torch_pdasr(han: tuple[int, int, int, int], clique: tuple[int, int], seed: int):
    """(groups, blocks, features, reduction), (clique blocks, growth) -> the torch model."""
    torch.manual_seed(seed)
    model = TorchPDASR(TorchHAN(*han), TorchResClique(*clique))
    return randomize_(model.eval(), seed)


def tiny_state_dict() -> dict:
    """The authors' layout for configs/x4.py:tiny (2 groups x 1 RCAB, 8 features; 1 block, g 4)."""
    return numpy_state_dict(torch_pdasr((2, 1, 8, 4), (1, 4), seed=3))
