"""lfcsr_jax: LFc-SR super-resolution trained with PD-ADMM, in JAX/Flax."""

import os as _os

# gs:// through fsspec/gcsfs rather than TensorFlow's gfile; set before anything picks a backend.
# Why, and how to opt out: lfcsr_jax/paths.py.
_os.environ.setdefault("EPATH_USE_TF", "0")
# gcsfs' bucket-type probe needs the Storage Control API (absent from emulators and offline
# hosts) and only serves zonal buckets, which this project does not use.
_os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

__version__ = "0.1.0"
