"""Running an LFc-SR export, shared by `super_resolve` (image files) and `evaluate` (benchmarks).

* settings.py: the compute dtype, the bucketed shapes, the --dtype/--bucket/--xla_cache_dir flags.
* model.py: `load_model` -> `LoadedModel`, the jitted bucketed forwards and their batching.
* memory.py: activation estimates and the memory budget: when to tile, how many images to batch.
* compile_cache.py: JAX's persistent compilation cache and the compiles a run caused.
"""
