"""PD-ADMM with T_LF = Gaussian blur (21x21, sigma 3) instead of the Haar LL (paper Sec. 4.3).

  python -m lfcsr_jax.main --config=configs/ablation_gaussian.py --workdir=DIR
"""

from __future__ import annotations

import ml_collections

from configs import x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = x4.get_config(arg)
    config.admm.lowpass = "gaussian"
    return config
