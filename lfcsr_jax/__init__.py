"""lfcsr_jax: LFc-SR super-resolution trained with PD-ADMM, in JAX/Flax."""

__version__ = "0.1.0"
