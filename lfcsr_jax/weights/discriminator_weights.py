"""The authors' PyTorch discriminator (loss/discriminator.py) -> params for `Discriminator`."""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

from lfcsr_jax.models.discriminator import DISCRIMINATOR_BLOCKS, HIDDEN_UNITS, flattened_features
from lfcsr_jax.weights.state_dicts import check_keys, oihw_to_hwio

Params = dict[str, dict[str, np.ndarray]]


def discriminator_params_from_state_dict(
        state_dict: Mapping[str, Any], patch_size: int,
        where: str = "discriminator state_dict") -> tuple[Params, Params]:
    """The authors' Discriminator state_dict -> (params, batch_stats) for `Discriminator`.

    Keys: features.{i}.0.weight (conv, OIHW), features.{i}.1.{weight, bias, running_mean,
    running_var} (BatchNorm), classifier.{0,2}.{weight, bias} (Linear (out, in)).
    features.{i}.1.num_batches_tracked is ignored (momentum is fixed, so it is unused).
    """
    expected, c_in = {}, 3
    for i, (c_out, _) in enumerate(DISCRIMINATOR_BLOCKS):
        expected[f"features.{i}.0.weight"] = (c_out, c_in, 3, 3)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            expected[f"features.{i}.1.{stat}"] = (c_out,)
        c_in = c_out
    expected["classifier.0.weight"] = (HIDDEN_UNITS, flattened_features(patch_size))
    expected["classifier.0.bias"] = (HIDDEN_UNITS,)
    expected["classifier.2.weight"] = (1, HIDDEN_UNITS)
    expected["classifier.2.bias"] = (1,)
    arrays = check_keys(f"{where} (patch_size={patch_size})", state_dict, expected,
                         re.compile(r"features\.\d+\.1\.num_batches_tracked"))
    params, batch_stats = {}, {}
    for i in range(len(DISCRIMINATOR_BLOCKS)):
        params[f"conv{i}"] = {"kernel": oihw_to_hwio(arrays[f"features.{i}.0.weight"])}
        params[f"bn{i}"] = {"scale": arrays[f"features.{i}.1.weight"],
                            "bias": arrays[f"features.{i}.1.bias"]}
        batch_stats[f"bn{i}"] = {"mean": arrays[f"features.{i}.1.running_mean"],
                                 "var": arrays[f"features.{i}.1.running_var"]}
    # Our flatten is channel-major like PyTorch's, so only the (out, in) -> (in, out) transpose.
    for ours, theirs in (("dense0", "classifier.0"), ("dense1", "classifier.2")):
        params[ours] = {"kernel": np.ascontiguousarray(arrays[f"{theirs}.weight"].T),
                        "bias": arrays[f"{theirs}.bias"]}
    return params, batch_stats
