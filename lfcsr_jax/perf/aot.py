"""The real programs compiled for an accelerator that is not here (deviceless AOT).

XLA compiles for a GPU from a device description, or for a TPU slice from its topology name, on a
CPU-only host (docs/design.md section 13). This module builds exactly what `main` runs on that
target: the steps of `steps.make_train_steps` (same shardings, same donation) over a `('data',)`
mesh of every chip, with the global batch split over them, and the bucketed inference forward of
`lfcsr_jax/inference/`. Each compile reports kernels per execution (`compiled_counts`), what sits
outside CUDA graphs (GPU), memory per chip against the chip's capacity, compile seconds, and the
compiler's cost analysis (which counts a while body once: meaningless for looped programs).

Targets: 'h200' (lfcsr_jax/data/devices/h200.txtpb), or 'tpu:<topology>', e.g. 'tpu:v5e:2x4'.
Needs the optional extras: `jax[cuda12]` (GPU) or `jax[tpu]` (libtpu) at the jax version.
`configure_environment` must run before the JAX backend starts.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import importlib.util
import os
import shutil
import tempfile
import time
from importlib import resources
from typing import Any, Callable

from lfcsr_jax import runtime
from lfcsr_jax.perf import compiled_counts

GPU_DESCRIPTIONS = {"h200": "h200.txtpb"}
# Deviceless only: autotuning needs the card, and one Haar einsum fails Triton GEMM tiling
# without it. Neither changes which kernels exist, only which library variant each one uses.
AOT_GPU_FLAGS = ("--xla_gpu_autotune_level=0", "--xla_gpu_enable_triton_gemm=false")
# HBM per chip, GiB (Cloud TPU documentation); a topology description does not carry it.
TPU_HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5litepod": 16.0, "v5p": 95.0, "v6e": 32.0}
PHASES = ("pretrain", "admm")


class AotError(ValueError):
    """A target that cannot be compiled for here (unknown name, missing extra)."""


@dataclasses.dataclass
class Target:
    name: str  # as given: 'h200', 'tpu:v5e:2x4'
    platform: str  # 'gpu' | 'tpu'
    devices: list[Any]
    capacity_bytes: int  # memory per device (a chip, or one TensorCore of a v4 chip)
    devices_per_chip: int = 1

    @property
    def chips(self) -> int:
        return max(len(self.devices) // self.devices_per_chip, 1)

    def first(self, count: int) -> "Target":
        """The same target restricted to its first `count` devices (e.g. one chip of a slice)."""
        if not 0 < count <= len(self.devices):
            raise AotError(f"--aot_devices={count}: {self.name} has {len(self.devices)} devices")
        return dataclasses.replace(self, name=f"{self.name}[{count}]",
                                   devices=self.devices[:count])


def configure_environment(target: str, environ: Any = os.environ) -> str:
    """JAX on the host CPU, the package's runtime flags (what `main` would run with) plus the
    deviceless-only GPU flags. Returns XLA_FLAGS. Call before jax initialises a backend."""
    environ["JAX_PLATFORMS"] = "cpu"
    # Only compiling: several processes may load libtpu at once (it locks it by default).
    environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    flags = runtime.configure(environ)
    if not target.startswith("tpu:"):
        flags = runtime.compose_xla_flags(flags, AOT_GPU_FLAGS)
        environ["XLA_FLAGS"] = flags
    return flags


def gpu_description(name: str) -> str:
    if name not in GPU_DESCRIPTIONS:
        raise AotError(f"--aot={name}: unknown GPU; known: {sorted(GPU_DESCRIPTIONS)} or "
                       "tpu:<topology> (e.g. tpu:v5e:2x4)")
    return (resources.files("lfcsr_jax") / "data" / "devices" / GPU_DESCRIPTIONS[name]).read_text()


def _capacity_from_description(text: str) -> int:
    for line in text.splitlines():
        if line.strip().startswith("device_memory_size:"):
            return int(line.split(":", 1)[1])
    raise AotError("device description has no device_memory_size")


def resolve_target(name: str) -> Target:
    """The devices of a target (no hardware touched)."""
    from jax.experimental import topologies

    if name.startswith("tpu:"):
        topology_name = name[len("tpu:"):]
        try:
            topology = topologies.get_topology_desc(platform="tpu", topology_name=topology_name)
        except Exception as error:  # noqa: BLE001 (libtpu missing, or an unknown slice)
            hint = ("" if importlib.util.find_spec("libtpu") else
                    "; install the extra: pip install 'jax[tpu]==<jax version>'")
            raise AotError(f"--aot={name}: cannot describe that TPU slice here ({error}){hint}"
                           ) from error
        generation = topology_name.split(":", 1)[0]
        if generation not in TPU_HBM_GIB:
            raise AotError(f"--aot={name}: unknown TPU generation {generation!r}; known: "
                           f"{sorted(TPU_HBM_GIB)}")
        devices = list(topology.devices)
        # The offline v4 topology lists each TensorCore as a device (no megacore): the chip's
        # HBM is shared by its cores.
        per_chip = len({getattr(d, "core_on_chip", 0) for d in devices}) or 1
        return Target(name, "tpu", devices, int(TPU_HBM_GIB[generation] * 2**30) // per_chip,
                      per_chip)
    description = gpu_description(name)
    try:
        topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                                target_config=description)
    except Exception as error:  # noqa: BLE001 (the CUDA plugin is not installed)
        raise AotError(f"--aot={name}: cannot compile for a GPU here ({error}); install the "
                       "extra: pip install 'jax[cuda12]==<jax version>'") from error
    return Target(name, "gpu", list(topology.devices), _capacity_from_description(description))


def make_mesh(target: Target) -> Any:
    import numpy as np
    from jax.sharding import Mesh

    return Mesh(np.array(target.devices), ("data",))


# ----------------------------------------------------------------------------- compiling


def _memory(compiled: Any, capacity: int) -> dict[str, Any]:
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    parts = {key: int(getattr(stats, f"{key}_size_in_bytes", 0) or 0)
             for key in ("argument", "output", "alias", "temp", "generated_code")}
    # Donated arguments alias outputs: they occupy memory once.
    peak = parts["argument"] + parts["output"] - parts["alias"] + parts["temp"] \
        + parts["generated_code"]
    gib = {f"{key}_gib": round(value / 2**30, 3) for key, value in parts.items()}
    return {**gib, "per_chip_gib": round(peak / 2**30, 3),
            "capacity_gib": round(capacity / 2**30, 2),
            "headroom": round(1.0 - peak / capacity, 3)}


def _cost(compiled: Any, looped: bool) -> dict[str, Any]:
    try:
        analysis = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 (not every backend offers it)
        return {}
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    keep = {key: float(analysis[key]) for key in ("flops", "bytes accessed", "optimal_seconds")
            if key in analysis}
    if looped:
        keep["note"] = "counts each while body once (no trip count): not the program's cost"
    return keep


def compile_program(jitted: Callable, args: tuple, target: Target, label: str,
                    keep_dump: str = "") -> dict[str, Any]:
    """Compiles `jitted(*args)` (ShapeDtypeStructs with shardings) for `target` and reports it."""
    dump_dir = tempfile.mkdtemp(prefix=f"aot_{label}_")
    # The GPU thunk sequence is read from the dump; a TPU compile dumps only when asked to.
    options = {"xla_dump_to": dump_dir} if target.platform == "gpu" or keep_dump else {}
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
    report: dict[str, Any] = {"program": label, "target": target.name, "chips": target.chips,
                              "devices": len(target.devices),
                              "compile_s": round(time.perf_counter() - start, 2)}
    kernels = compiled_counts.count_kernels(compiled.as_text())
    report["counts"] = kernels.as_dict()
    report["memory"] = _memory(compiled, target.capacity_bytes)
    report["cost_analysis"] = _cost(compiled, looped=kernels.while_loops > 0)
    if target.platform == "gpu":
        files = glob.glob(os.path.join(dump_dir, "*thunk_sequence_after_thunk_passes.txt"))
        summaries = [compiled_counts.summarise_thunks(open(f).read()) for f in files]
        report["thunks"] = compiled_counts.merge_thunk_summaries(summaries).as_dict()
    if keep_dump:
        shutil.copytree(dump_dir, os.path.join(keep_dump, label), dirs_exist_ok=True)
    shutil.rmtree(dump_dir, ignore_errors=True)
    return report


def _abstract(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` placed by `shardings` (a matching tree, or one sharding)."""
    import jax

    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree_util.tree_map(lambda _: shardings, tree)
    return jax.tree_util.tree_map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree, shardings)


def training_programs(config: Any, target: Target, phases: tuple[str, ...] = PHASES,
                      keep_dump: str = "") -> dict[str, dict[str, Any]]:
    """Compiles each phase's step as `train.py` builds it on `target`'s mesh: uint8 batches of
    config.train.global_batch_size split over every chip, the state donated."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from lfcsr_jax.training import steps, train_state

    batch = config.train.global_batch_size
    if batch % len(target.devices):
        raise AotError(f"train.global_batch_size={batch} does not split over the "
                       f"{len(target.devices)} devices of {target.name}")
    mesh = make_mesh(target)
    networks = train_state.make_networks(config)
    abstract_state = jax.eval_shape(functools.partial(
        train_state.init_train_state, config=config, networks=networks), jax.random.PRNGKey(0))
    state_shardings = train_state.state_shardings(abstract_state, mesh)
    state = _abstract(abstract_state, state_shardings)
    replicated = NamedSharding(mesh, PartitionSpec())
    vgg = _abstract(jax.eval_shape(lambda k: train_state.init_vgg_params(k, config, networks),
                                   jax.random.PRNGKey(1)), replicated)
    split = NamedSharding(mesh, PartitionSpec("data"))
    lr, scale = config.input.lr_patch, config.model.scale
    batch_args = {"lr": jax.ShapeDtypeStruct((batch, lr, lr, 3), jnp.uint8, sharding=split),
                  "hr": jax.ShapeDtypeStruct((batch, lr * scale, lr * scale, 3), jnp.uint8,
                                             sharding=split)}
    jitted = steps.make_train_steps(networks, state_shardings, mesh)
    return {phase: compile_program(jitted[phase], (state, batch_args, vgg), target,
                                   f"{phase}_step", keep_dump)
            for phase in phases}


def inference_program(config: Any, target: Target, lr_hw: tuple[int, int],
                      keep_dump: str = "") -> dict[str, Any]:
    """The forward super_resolve runs for one image of LR size `lr_hw` (in its bucket, masked
    unless it fills the bucket exactly, as LoadedModel runs it; params already in the compute
    dtype) on one chip of `target`."""
    import json

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from lfcsr_jax.inference.model import jitted_forwards
    from lfcsr_jax.inference.settings import bucket_dim
    from lfcsr_jax.models import generator

    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.model.to_dict().items()}
    model = generator.build_lfcsr(cfg)
    params = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 16, 16, 3)))["params"],
                            jax.random.PRNGKey(0))
    params = jax.eval_shape(lambda p: generator.cast_for_compute(p, generator.compute_dtype(cfg)),
                            params)
    one_chip = target.first(1)
    replicated = NamedSharding(make_mesh(one_chip), PartitionSpec())
    params = _abstract(params, replicated)
    h, w = (bucket_dim(n) for n in lr_hw)
    image = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32, sharding=replicated)
    mask = (None if (h, w) == tuple(lr_hw)
            else jax.ShapeDtypeStruct((1, h, w, 1), jnp.float32, sharding=replicated))
    apply_both, _, _ = jitted_forwards(json.dumps(cfg, sort_keys=True))
    label = f"inference_{lr_hw[0]}x{lr_hw[1]}"
    report = compile_program(apply_both, (params, image, mask), one_chip, label, keep_dump)
    report["bucketed_lr_shape"] = [h, w]
    report["masked"] = mask is not None
    return report
