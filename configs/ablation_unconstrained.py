"""The unconstrained two-stage model: the Eq. 7 objective with lambda_r = 0 (no LF coupling).

  python -m lfcsr_jax.main --config=configs/ablation_unconstrained.py --workdir=DIR
"""

from __future__ import annotations

import ml_collections

from configs import x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = x4.get_config(arg)
    config.admm.method = "regularizer"
    config.admm.lambda_r = 0.0
    return config
