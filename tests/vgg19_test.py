"""VGG19 features: size, parity with torchvision's layout (torch) and Keras VGG19, weight files."""

from __future__ import annotations

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfcsr_jax.models.vgg19 import VGG19Features, vgg_input
from lfcsr_jax.weights import state_dicts, vgg_weights
from tests.conftest import write_keras_legacy_h5

_TORCHVISION_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                    512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _assert_close(actual, expected, rel: float) -> None:
    expected = np.asarray(expected)
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=rel,
                               atol=rel * float(np.max(np.abs(expected))))


def _random_params(seed: int = 0) -> dict:
    """Random weights in our layout, scaled (He) so activations stay O(1) through 16 convs."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, (c_in, c_out) in vgg_weights.VGG19_CONV_SHAPES.items():
        params[name] = {
            "kernel": (rng.standard_normal((3, 3, c_in, c_out)) * np.sqrt(2 / (9 * c_in)))
            .astype(np.float32),
            "bias": (0.1 * rng.standard_normal(c_out)).astype(np.float32)}
    return params


def test_parameter_count_and_shapes():
    variables = jax.eval_shape(lambda: VGG19Features().init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3)), layers=("relu5_4",)))
    assert _count(variables["params"]) == 20_024_384  # torchvision vgg19().features
    assert variables["params"]["conv3_4"]["kernel"].shape == (3, 3, 256, 256)
    # A relu3_4 model creates only the first 8 convs (it never runs deeper).
    shallow = jax.eval_shape(lambda: VGG19Features().init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert sorted(shallow["params"]) == sorted(vgg_weights.VGG19_CONV_SHAPES)[:8]
    out = jax.eval_shape(lambda v: VGG19Features().apply(
        v, jnp.zeros((2, 144, 144, 3)), layers=("relu3_4", "relu1_2")), variables)
    assert set(out) == {"relu3_4", "relu1_2"}
    assert out["relu3_4"].shape == (2, 36, 36, 256)  # 1296 positions for a 144 patch


def test_unknown_layer_is_an_error():
    with pytest.raises(ValueError, match="relu3_5"):
        VGG19Features().apply({"params": _random_params()}, jnp.zeros((1, 8, 8, 3)),
                              layers=("relu3_5",))


def _torch_vgg19_features(torch):
    """torchvision's vgg19().features restated: conv3x3 pad 1 + ReLU, MaxPool2d(2, 2)."""
    nn = torch.nn
    layers, c_in = [], 3
    for item in _TORCHVISION_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = item
    return nn.Sequential(*layers)


def test_matches_torchvision_layout():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    features = _torch_vgg19_features(torch).eval()
    with torch.no_grad():
        for layer in features:
            if isinstance(layer, torch.nn.Conv2d):  # He scale keeps deep activations O(1)
                layer.weight.normal_(0.0, float(np.sqrt(2 / (9 * layer.in_channels))))
                layer.bias.uniform_(-0.1, 0.1)
    state_dict = dict(features.state_dict(prefix="features."))
    state_dict["classifier.0.weight"] = torch.zeros(4, 3)  # a full vgg19() head: ignored
    params = vgg_weights.vgg19_params_from_torchvision(state_dict)

    x_nhwc = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    # relu index in torchvision's Sequential for each of our names
    probes = {"relu1_1": 1, "relu2_2": 8, "relu3_4": 17, "relu4_4": 26, "relu5_4": 35}
    ours = VGG19Features().apply({"params": params}, x_nhwc, layers=tuple(probes))
    with torch.no_grad():
        h = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
        for index, layer in enumerate(features):
            h = layer(h)
            for name, probe in probes.items():
                if probe == index:
                    _assert_close(ours[name], h.numpy().transpose(0, 2, 3, 1), 1e-4)


def test_shallow_call_needs_only_shallow_params():
    params = _random_params()
    shallow = {k: v for k, v in params.items() if k[len("conv")] in "123"}
    x = np.random.default_rng(2).standard_normal((1, 16, 16, 3)).astype(np.float32)
    full = VGG19Features().apply({"params": params}, x, layers=("conv3_4", "relu3_4"))
    cut = VGG19Features().apply({"params": shallow}, x, layers=("relu3_4",))
    np.testing.assert_array_equal(cut["relu3_4"], full["relu3_4"])
    np.testing.assert_array_equal(full["relu3_4"], np.maximum(full["conv3_4"], 0))


@pytest.fixture(scope="module")
def keras_vgg19():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3))
    rng = np.random.default_rng(3)
    for layer in model.layers:  # random biases too (Keras initialises them to zero)
        weights = layer.get_weights()
        if weights:
            layer.set_weights([weights[0], (0.1 * rng.standard_normal(weights[1].shape))
                               .astype(np.float32)])
    return keras, model


def _check_keras_parity(keras, model, params) -> None:
    probe = keras.Model(model.input, model.get_layer("block3_conv4").output)
    x_rgb = np.random.default_rng(4).uniform(-120, 140, (2, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(probe(x_rgb[..., ::-1].copy()))  # the Keras network reads BGR
    ours = VGG19Features().apply({"params": params}, x_rgb, layers=("relu3_4",))["relu3_4"]
    _assert_close(ours, expected, 1e-4)


def test_keras_model_conversion(keras_vgg19):
    keras, model = keras_vgg19
    _check_keras_parity(keras, model, vgg_weights.vgg19_params_from_keras(model))


def test_keras_h5_files(keras_vgg19, tmp_path):
    keras, model = keras_vgg19
    v3_path = tmp_path / "vgg19.weights.h5"  # Keras 3 format: layers/conv2d_k/vars
    model.save_weights(v3_path)
    weights = vgg_weights.load_vgg19_weights(v3_path)
    assert weights.input_convention == "caffe"
    assert vgg_weights.read_vgg19_input_convention(v3_path) == "caffe"
    _check_keras_parity(keras, model, weights.params)

    keras_path = tmp_path / "vgg19.keras"  # Keras 3 whole-model archive (zip)
    model.save(keras_path)
    _check_keras_parity(keras, model, vgg_weights.load_vgg19_weights(keras_path).params)

    legacy = pytest.importorskip("keras.src.legacy.saving.legacy_h5_format")
    import h5py  # pylint: disable=import-outside-toplevel

    legacy_path = tmp_path / "vgg19_notop.h5"  # the layout of Keras's downloadable ImageNet file
    with h5py.File(legacy_path, "w") as f:
        legacy.save_weights_to_hdf5_group(f, model)
    _check_keras_parity(keras, model, vgg_weights.vgg19_params_from_keras(legacy_path))


def test_vgg_input_conventions():
    x = jnp.asarray([[[[255.0, 0.0, 127.5]]]])
    np.testing.assert_allclose(
        vgg_input(x, "torchvision"),
        [[[[(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]]]], rtol=1e-6)
    np.testing.assert_allclose(vgg_input(x, "caffe"),
                               [[[[255 - 123.68, -116.779, 127.5 - 103.939]]]], rtol=1e-6)
    # The authors' code: 0-255 values into the 0-1 statistics.
    np.testing.assert_allclose(
        vgg_input(x, "torchvision", "reference"),
        [[[[(255 - 0.485) / 0.229, (0 - 0.456) / 0.224, (127.5 - 0.406) / 0.225]]]], rtol=1e-6)
    with pytest.raises(ValueError, match="bgr"):
        vgg_input(x, "bgr")
    with pytest.raises(ValueError, match="'caffe'.*'reference'"):  # no such thing
        vgg_input(x, "caffe", "reference")
    with pytest.raises(ValueError, match="'imagenet'"):
        vgg_input(x, "torchvision", "imagenet")


def _torchvision_like_state_dict() -> dict[str, np.ndarray]:
    params = _random_params()
    # Contiguous copies: safetensors.numpy.save_file writes a transposed view's raw buffer.
    return {f"features.{index}.{leaf}": np.ascontiguousarray(
                params[name]["kernel"].transpose(3, 2, 0, 1) if leaf == "weight"
                else params[name]["bias"])
            for name, index in vgg_weights.TORCHVISION_CONV_INDEX.items()
            for leaf in ("weight", "bias")}


def test_torchvision_converter_errors_name_the_keys():
    state_dict = _torchvision_like_state_dict()
    vgg_weights.vgg19_params_from_torchvision(state_dict)

    missing = {k: v for k, v in state_dict.items() if k != "features.16.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['features.16.bias'\]"):
        vgg_weights.vgg19_params_from_torchvision(missing)

    misshaped = dict(state_dict, **{"features.0.weight": np.zeros((64, 1, 3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"features.0.weight: expected \(64, 3, 3, 3\)"):
        vgg_weights.vgg19_params_from_torchvision(misshaped)

    unknown = dict(state_dict, **{"features.1.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ValueError, match=r"unknown keys \['features.1.weight'\]"):
        vgg_weights.vgg19_params_from_torchvision(unknown)


def test_npz_round_trip_and_bad_files(tmp_path):
    params = _random_params()
    path = tmp_path / "vgg.npz"
    vgg_weights.save_vgg19_params(path, params, "caffe")
    loaded = vgg_weights.load_vgg19_weights(path)
    assert loaded.input_convention == "caffe"
    assert vgg_weights.read_vgg19_input_convention(path) == "caffe"
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, params)

    truncated = tmp_path / "truncated.npz"
    with np.load(path) as data:
        np.savez(truncated, **{k: data[k] for k in data.files if k != "conv5_4/bias"})
    with pytest.raises(ValueError, match=r"truncated.npz.*missing keys \['conv5_4/bias'\]"):
        vgg_weights.load_vgg19_weights(truncated)

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="garbage.npz"):
        vgg_weights.load_vgg19_weights(garbage)
    with pytest.raises(ValueError, match="garbage.npz"):
        vgg_weights.read_vgg19_input_convention(garbage)
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="garbage.h5"):
        vgg_weights.load_vgg19_weights(tmp_path / "garbage.h5")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        vgg_weights.load_vgg19_weights(tmp_path / "absent.npz")


def test_torch_and_safetensors_files(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    state_dict = _torchvision_like_state_dict()
    expected = vgg_weights.vgg19_params_from_torchvision(state_dict)
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, tmp_path / "vgg19.pth")
    save_file(state_dict, str(tmp_path / "vgg19.safetensors"))
    for name in ("vgg19.pth", "vgg19.safetensors"):
        weights = vgg_weights.load_vgg19_weights(tmp_path / name)
        assert weights.input_convention == "torchvision"
        assert vgg_weights.read_vgg19_input_convention(tmp_path / name) == "torchvision"
        jax.tree_util.tree_map(np.testing.assert_array_equal, weights.params, expected)

    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth"):
        state_dicts.load_state_dict(tmp_path / "list.pth")


# ---------------------------------------------------------------------------------------------
# The convention of a weights file reaches the loss (train.load_vgg_params -> admm step).

_IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406])
_IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225])
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def _numpy_relu3_4(x_BxHxWxC: np.ndarray, convs: list) -> np.ndarray:
    """VGG19 up to relu3_4 in float64: 3x3 convs (padding 1) + ReLU, 2x2 max-pools."""
    x, layers = np.asarray(x_BxHxWxC, np.float64), iter(convs)
    for block, n_convs in ((1, 2), (2, 2), (3, 4)):
        if block > 1:
            b, h, w, c = x.shape
            x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        for _ in range(n_convs):
            kernel_3x3xIxO, bias_O = next(layers)
            padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            h, w = x.shape[1:3]
            x = np.maximum(bias_O + sum(padded[:, dy:dy + h, dx:dx + w] @ kernel_3x3xIxO[dy, dx]
                                        for dy in range(3) for dx in range(3)), 0.0)
    return x


def _torchvision_features(images: np.ndarray, state_dict: dict) -> np.ndarray:
    """torchvision's rule restated: RGB / 255, ImageNet mean/std; OIHW weights."""
    x = (np.asarray(images, np.float64) / 255.0 - _IMAGENET_MEAN_RGB) / _IMAGENET_STD_RGB
    indices = sorted(vgg_weights.TORCHVISION_CONV_INDEX.values())[:8]
    return _numpy_relu3_4(x, [(state_dict[f"features.{i}.weight"].astype(np.float64)
                               .transpose(2, 3, 1, 0), state_dict[f"features.{i}.bias"])
                              for i in indices])


def _caffe_features(images: np.ndarray, keras_layers: dict) -> np.ndarray:
    """Keras preprocess_input(mode='caffe') restated: RGB -> BGR, minus the BGR mean, no std;
    the Keras kernels, which read BGR."""
    x = np.asarray(images, np.float64)[..., ::-1] - _CAFFE_MEAN_BGR
    names = [f"block{b}_conv{i}" for b, n in ((1, 2), (2, 2), (3, 4)) for i in range(1, n + 1)]
    return _numpy_relu3_4(x, [(keras_layers[n][0].astype(np.float64), keras_layers[n][1])
                              for n in names])


def _weights_files_of_one_network(tmp_path):
    """One random VGG19 written as a torchvision state_dict and as a Keras (Caffe BGR) file,
    each converted by `convert vgg19`; returns the converted paths and the raw files' arrays."""
    from lfcsr_jax import convert  # pylint: disable=import-outside-toplevel

    params_rgb = _random_params(seed=5)
    state_dict = {}
    for name, index in vgg_weights.TORCHVISION_CONV_INDEX.items():
        state_dict[f"features.{index}.weight"] = np.ascontiguousarray(
            params_rgb[name]["kernel"].transpose(3, 2, 0, 1))
        state_dict[f"features.{index}.bias"] = params_rgb[name]["bias"]
    keras_layers = {}
    for name in vgg_weights.VGG19_CONV_NAMES:
        block, i = name[len("conv"):].split("_")
        kernel = params_rgb[name]["kernel"]
        if name == "conv1_1":
            kernel = np.ascontiguousarray(kernel[:, :, ::-1])  # Caffe's first conv reads BGR
        keras_layers[f"block{block}_conv{i}"] = (kernel, params_rgb[name]["bias"])
    np.savez(tmp_path / "torchvision.npz", **state_dict)
    write_keras_legacy_h5(tmp_path / "keras.h5", keras_layers)
    for source, out in (("torchvision.npz", "vgg_torchvision.npz"), ("keras.h5", "vgg_caffe.npz")):
        convert.main(["vgg19", "--input", str(tmp_path / source), "--output", str(tmp_path / out)])
    return tmp_path / "vgg_torchvision.npz", tmp_path / "vgg_caffe.npz", state_dict, keras_layers


class _NearestUpsample(flax_nn.Module):
    """Stand-in stage one (compiles in a moment): nearest x4 plus a learned colour mix."""

    @flax_nn.compact
    def __call__(self, x_BxhxwxC):
        x_BxHxWxC = jnp.repeat(jnp.repeat(x_BxhxwxC, 4, axis=1), 4, axis=2)
        return x_BxHxWxC + flax_nn.Dense(3)(x_BxHxWxC)


class _Refine(flax_nn.Module):
    """Stand-in stage two: a residual 3x3 conv."""

    @flax_nn.compact
    def __call__(self, x_BxHxWxC):
        return x_BxHxWxC + flax_nn.Conv(3, (3, 3))(x_BxHxWxC)


def _contextual_inputs_of_one_admm_step(config, monkeypatch):
    """Trains one ADMM step with the VGG weights train.load_vgg_params loads for `config`
    (real VGG19 and discriminator, stand-in generators); returns (VGG(Y), VGG(HR), Y, HR) as
    the contextual loss received them."""
    import dataclasses  # pylint: disable=import-outside-toplevel
    import functools  # pylint: disable=import-outside-toplevel

    from lfcsr_jax.training import (admm, losses, train, train_state)  # pylint: disable=import-outside-toplevel

    train.validate_config(config)
    networks = dataclasses.replace(train_state.make_networks(config), objective=_NearestUpsample(),
                                   perceptual=_Refine())
    vgg = train.load_vgg_params(config, networks)
    state = jax.jit(functools.partial(train_state.init_train_state, config=config,
                                      networks=networks))(jax.random.key(0))
    rng = np.random.default_rng(6)
    side, batch = config.input.lr_patch, config.train.global_batch_size
    images = {"lr": rng.integers(0, 256, (batch, side, side, 3)).astype(np.uint8),
              "hr": rng.integers(0, 256, (batch, 4 * side, 4 * side, 3)).astype(np.uint8)}
    y = networks.perceptual.apply({"params": state.perceptual_params}, networks.objective.apply(
        {"params": state.objective_params}, images["lr"].astype(np.float32)))
    seen = []
    original = losses.contextual_loss

    def recording_contextual_loss(x_feats, y_feats, *args, **kwargs):
        jax.debug.callback(lambda a, b: seen.append((np.asarray(a), np.asarray(b))),
                           x_feats, y_feats)
        return original(x_feats, y_feats, *args, **kwargs)

    monkeypatch.setattr(losses, "contextual_loss", recording_contextual_loss)
    step = jax.jit(functools.partial(admm.admm_step, networks=networks), donate_argnums=0)
    _, metrics = step(state, images, vgg)
    jax.block_until_ready(metrics)
    monkeypatch.setattr(losses, "contextual_loss", original)
    assert bool(metrics["all_finite"]) and len(seen) == 1, len(seen)
    return seen[0][0], seen[0][1], np.asarray(y), images["hr"]


def test_admm_step_feeds_vgg_the_input_convention_of_its_weights_file(tmp_path, monkeypatch):
    """Keras (Caffe) weights get BGR-ordered 0-255 minus the Caffe mean, torchvision weights get
    x/255 with the ImageNet mean/std: the same network, converted from the two file formats,
    must see each its own input in the contextual loss of a real training step."""
    from configs import x4  # pylint: disable=import-outside-toplevel

    torchvision_file, caffe_file, state_dict, keras_layers = _weights_files_of_one_network(tmp_path)
    hand = {torchvision_file: lambda images: _torchvision_features(images, state_dict),
            caffe_file: lambda images: _caffe_features(images, keras_layers)}
    seen = {}
    for weights_file, features_by_hand in hand.items():
        config = x4.get_config("tiny")
        config.loss.vgg_weights = str(weights_file)
        y_feats, hr_feats, y, hr = _contextual_inputs_of_one_admm_step(config, monkeypatch)
        _assert_close(hr_feats, features_by_hand(hr), 1e-4)
        _assert_close(y_feats, features_by_hand(y), 1e-3)  # Y itself is float32
        seen[weights_file] = hr_feats
    # The two conventions really are different inputs (else the test would prove nothing).
    difference = np.max(np.abs(seen[caffe_file] / np.max(seen[caffe_file]) -
                               seen[torchvision_file] / np.max(seen[torchvision_file])))
    assert difference > 0.1


def test_validate_config_refuses_reference_scaling_with_caffe_weights(tmp_path):
    from configs import x4  # pylint: disable=import-outside-toplevel
    from lfcsr_jax.training import train  # pylint: disable=import-outside-toplevel

    for convention in ("torchvision", "caffe"):
        vgg_weights.save_vgg19_params(tmp_path / f"{convention}.npz", _random_params(), convention)
    config = x4.get_config("tiny")
    config.loss.vgg_input_scaling = "reference"
    config.loss.vgg_weights = str(tmp_path / "torchvision.npz")
    train.validate_config(config)  # the authors' scaling of torchvision weights: allowed
    config.loss.vgg_weights = str(tmp_path / "caffe.npz")
    with pytest.raises(train.UserError, match="vgg_input_scaling='reference'.*'caffe'"):
        train.validate_config(config)
    config.loss.vgg_input_scaling = "as_weights"
    train.validate_config(config)
    config.loss.vgg_input_scaling = "imagenet"  # the old name of 'as_weights'
    with pytest.raises(train.UserError, match="vgg_input_scaling='imagenet'"):
        train.validate_config(config)
