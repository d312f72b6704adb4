"""Eq. 7 baseline: one joint objective L_O + L_P + lambda_r * mean|T(Y) - T(Y')| (paper Fig. 6).

  python -m lfcsr_jax.main --config=configs/ablation_regularizer.py:0.1 --workdir=DIR
The argument is lambda_r (default 1.0), a configs/x4.py variant ('demo', 'tiny'), or both
('tiny,0.1'); sweep lambda_r as the paper's Fig. 6 does with `python -m lfcsr_jax.sweep`.
"""

from __future__ import annotations

import ml_collections

from configs import x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    variants = [t for t in tokens if t in ("paper", "demo", "tiny")]
    numbers = [t for t in tokens if t not in variants]
    config = x4.get_config(variants[0] if variants else None)
    config.admm.method = "regularizer"
    config.admm.lambda_r = float(numbers[0]) if numbers else 1.0
    return config
