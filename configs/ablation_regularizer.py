"""Eq. 7 baseline: one joint objective L_O + L_P + lambda_r * mean|T(Y) - T(Y')| (paper Fig. 6).

  python -m lfcsr_jax.main --config=configs/ablation_regularizer.py:0.1 --workdir=DIR
The argument is lambda_r (default 1.0); sweep it as the paper's Fig. 6 does. Like every config,
it also takes the x4 variants, alone or before lambda_r: `:tiny`, `:demo`, `:tiny,0.1`.
"""

from __future__ import annotations

import ml_collections

from configs import x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`arg`: '[variant][,lambda_r]' or 'lambda_r', e.g. 'tiny', 'tiny,0.1', '0.1', ''."""
    parts = [part for part in (arg or "").split(",") if part]
    variant = parts.pop(0) if parts and parts[0] in x4.VARIANTS else ""
    if len(parts) > 1:
        raise ValueError(f"configs/ablation_regularizer.py: {arg!r}; expected "
                         f"'[variant][,lambda_r]' with a variant in {x4.VARIANTS}")
    config = x4.get_config(variant)
    config.admm.method = "regularizer"
    config.admm.lambda_r = float(parts[0]) if parts else 1.0
    return config
