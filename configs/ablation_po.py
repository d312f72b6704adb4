"""Order swap P-O: stage one perceptual, stage two objective, equality on the HIGH Haar bands.

  python -m lfcsr_jax.main --config=configs/ablation_po.py --workdir=DIR
"""

from __future__ import annotations

import ml_collections

from configs import x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = x4.get_config(arg)
    config.admm.order = "perceptual_first"
    config.admm.constrained_band = "high"
    return config
