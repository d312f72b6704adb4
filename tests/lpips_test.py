"""LPIPS in JAX vs a PyTorch statement of LPIPS (random AlexNet, the real v0.1 alex heads)."""

from __future__ import annotations

import numpy as np
import pytest

from lfcsr_jax.evaluation import lpips as lpips_lib
from lfcsr_jax.evaluation.metrics import MetricUnavailable


def _torch_lpips(torch, state_dict, heads, img0_u8, img1_u8):
    """LPIPS as the lpips package defines it (alex, v0.1), written here with torch.nn."""
    nn = torch.nn
    features = nn.Sequential(
        nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    ).double()
    features.load_state_dict({k.removeprefix("features."): v.double() for k, v in state_dict.items()})
    slices = [(0, 2), (2, 5), (5, 8), (8, 10), (10, 12)]
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

    def taps(img_u8):
        x = torch.from_numpy(img_u8.astype(np.float64)).permute(2, 0, 1)[None] / 127.5 - 1.0
        x = (x - shift) / scale
        out = []
        for a, b in slices:
            x = features[a:b](x)
            out.append(x)
        return out

    total = 0.0
    with torch.no_grad():
        for f0, f1, w in zip(taps(img0_u8), taps(img1_u8), heads):
            n0 = f0 / (torch.sqrt(torch.sum(f0**2, dim=1, keepdim=True)) + 1e-10)
            n1 = f1 / (torch.sqrt(torch.sum(f1**2, dim=1, keepdim=True)) + 1e-10)
            lin = torch.nn.functional.conv2d((n0 - n1) ** 2, w.double())
            total += lin.mean(dim=(2, 3)).item()
    return total


def test_lpips_matches_torch_statement(shared_data):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 11, 4, 2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
        torch.nn.Conv2d(64, 192, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2),
        torch.nn.Conv2d(192, 384, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(384, 256, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(256, 256, 3, padding=1), torch.nn.ReLU(),
    )
    state_dict = {f"features.{k}": v for k, v in reference.state_dict().items()}
    heads_file = shared_data / "weights/lpips/v0.1/alex.pth"
    heads_torch = torch.load(heads_file, map_location="cpu", weights_only=True)

    params = {
        "alexnet": lpips_lib.alexnet_params_from_torchvision(state_dict),
        "heads": lpips_lib.heads_from_state_dict(
            dict(np.load(shared_data / "weights/lpips/v0.1/alex.npz"))),
    }
    rng = np.random.default_rng(0)
    img0 = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    img1 = np.clip(img0.astype(int) + rng.integers(-40, 41, img0.shape), 0, 255).astype(np.uint8)
    heads_list = [heads_torch[f"lin{k}.model.1.weight"] for k in range(5)]
    expected = _torch_lpips(torch, state_dict, heads_list, img0, img1)
    got = lpips_lib.lpips(params, img0, img1)
    assert expected > 1e-3  # a meaningful distance, not two zeros
    assert abs(got - expected) < 1e-5, (got, expected)
    assert lpips_lib.lpips(params, img0, img0) == pytest.approx(0.0, abs=1e-7)


def test_load_from_folder_and_missing_backbone(tmp_path, shared_data):
    with pytest.raises(MetricUnavailable, match="AlexNet ImageNet weights"):
        lpips_lib.load_lpips_params(shared_data / "weights/lpips")
    with pytest.raises(MetricUnavailable, match="not found"):
        lpips_lib.load_lpips_params(tmp_path / "nowhere")
    # A folder with a (random) converted backbone and the heads loads and gives a distance.
    random_params = lpips_lib.random_alexnet_params()
    state = {}
    for index, *_ in lpips_lib.ALEXNET_CONVS:
        layer = random_params[f"features_{index}"]
        state[f"features.{index}.weight"] = np.transpose(np.asarray(layer["kernel"]), (3, 2, 0, 1))
        state[f"features.{index}.bias"] = np.asarray(layer["bias"])
    np.savez(tmp_path / "alexnet-random.npz", **state)
    (tmp_path / "v0.1").mkdir()
    (tmp_path / "v0.1" / "alex.npz").write_bytes(
        (shared_data / "weights/lpips/v0.1/alex.npz").read_bytes())
    params = lpips_lib.load_lpips_params(tmp_path)
    np.testing.assert_array_equal(params["alexnet"]["features_3"]["kernel"],
                                  np.asarray(random_params["features_3"]["kernel"]))
    img = np.zeros((40, 40, 3), np.uint8)
    assert lpips_lib.lpips(params, img, img + 50) > 0.0
