"""Eq. 7 baseline: one joint objective L_O + L_P + lambda_r * mean|T(Y) - T(Y')| (paper Fig. 6).

  python -m lfcsr_jax.main --config=configs/ablation_regularizer.py:0.1 --workdir=DIR
The argument is lambda_r (default 1.0); sweep it as the paper's Fig. 6 does.
"""

from __future__ import annotations

import ml_collections

from configs import x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = x4.get_config()
    config.admm.method = "regularizer"
    config.admm.lambda_r = float(arg) if arg else 1.0
    return config
