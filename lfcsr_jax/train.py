"""The training loop: pre-training then PD-ADMM, with checkpoints, resume, logging and validation.

Global batch semantics: `config.train.global_batch_size` is the batch of ONE optimisation step
summed over every device of every host (the paper's 16). Each process reads
global_batch_size / process_count examples per step (its own slots of the global batch) and the
jitted step sees one global array sharded along the ('data',) mesh axis; the dual variable s is
sharded the same way, everything else is replicated.
"""

from __future__ import annotations

import functools
import json
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from lfcsr_jax import (admm, checkpointing, configuration, schedules, train_logging,
                       validation)


class UserError(ValueError):
    """A configuration or input problem, reported as one clear line before any compute."""


# ----------------------------------------------------------------------------- configuration


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Checks every value the run depends on; raises UserError naming the field."""
    problems: list[str] = []
    model, inp, train = config.model, config.input, config.train
    if model.scale != 4:
        problems.append(f"model.scale={model.scale}: LFc-SR is defined for x4 only")
    hr_patch = inp.lr_patch * model.scale
    if inp.lr_patch <= 0 or hr_patch % 8:
        problems.append(
            f"input.lr_patch={inp.lr_patch}: the HR patch (lr_patch*scale={hr_patch}) must be a "
            "positive multiple of 8 (two Haar levels and three stride-2 discriminator convs)")
    for field, allowed in (("model.dtype", configuration.MODEL_DTYPES),
                           ("admm.method", configuration.ADMM_METHODS),
                           ("admm.lowpass", configuration.LOWPASS_KINDS),
                           ("admm.constrained_band", configuration.CONSTRAINED_BANDS),
                           ("admm.order", configuration.STAGE_ORDERS)):
        group, name = field.split(".")
        if config[group][name] not in allowed:
            problems.append(f"{field}={config[group][name]!r}: expected one of {allowed}")
    problems += _check_vgg_input(config.loss)
    unknown_phases = [p for p in train.phases if p not in configuration.PHASES]
    if unknown_phases or not train.phases:
        problems.append(f"train.phases={tuple(train.phases)}: expected a non-empty subset of "
                        f"{configuration.PHASES}")
    batch = train.global_batch_size
    devices, processes = jax.device_count(), jax.process_count()
    if batch <= 0 or batch % devices or batch % processes:
        problems.append(f"train.global_batch_size={batch} must be divisible by the device count "
                        f"({devices}) and the process count ({processes})")
    problems += _check_input_paths(inp)
    for field, path in (("loss.vgg_weights", config.loss.vgg_weights),
                        ("train.init_checkpoint", train.init_checkpoint),
                        ("train.lpips_dir", train.lpips_dir)):
        if path and not Path(path).exists():
            problems.append(f"{field}={path!r}: no such file or directory")
    if train.lpips_dir and Path(train.lpips_dir).is_dir():
        from lfcsr_jax import lpips

        try:
            lpips.find_lpips_files(train.lpips_dir)
        except lpips.MetricUnavailable as missing:
            problems.append(f"train.lpips_dir: {missing}")
    for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                  "image_every_steps", "keep_checkpoints"):
        if train[field] <= 0:
            problems.append(f"train.{field}={train[field]} must be positive")
    if problems:
        raise UserError("invalid configuration:\n  " + "\n  ".join(problems))


def _check_vgg_input(loss: ml_collections.ConfigDict) -> list[str]:
    """The scaling must exist and suit the input convention the weights file stores."""
    from lfcsr_jax import vgg_weights

    if loss.vgg_input_scaling not in configuration.VGG_INPUT_SCALINGS:
        return [f"loss.vgg_input_scaling={loss.vgg_input_scaling!r}: expected one of "
                f"{configuration.VGG_INPUT_SCALINGS}"]
    if not loss.vgg_weights or not Path(loss.vgg_weights).is_file():
        return []  # random weights are fed as 'torchvision'; a missing file is reported below
    try:
        convention = vgg_weights.read_vgg19_input_convention(loss.vgg_weights)
    except ValueError as error:
        return [f"loss.vgg_weights: {error}"]
    if loss.vgg_input_scaling == "reference" and convention != "torchvision":
        return [f"loss.vgg_input_scaling='reference' (0-255 values into torchvision's 0-1 "
                f"statistics, as the authors' code) cannot feed {loss.vgg_weights!r}, whose "
                f"weights expect the {convention!r} input convention: use 'as_weights'"]
    return []


def _check_input_paths(inp: ml_collections.ConfigDict) -> list[str]:
    if inp.source not in configuration.INPUT_SOURCES:
        return [f"input.source={inp.source!r}: expected one of {configuration.INPUT_SOURCES}"]
    needed = {"folder": ("hr_dir",), "paired": ("hr_dir", "lr_dir")}.get(inp.source, ())
    problems = []
    for field in needed:
        if not inp[field]:
            problems.append(f"input.{field} must be set for input.source={inp.source!r}")
        elif not Path(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    for field in ("val_hr_dir", "val_lr_dir"):
        if inp[field] and not Path(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    return problems


def phase_lengths(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Steps of each configured phase, in order (epochs -> steps happens in schedules.py)."""
    return {phase: schedules.phase_steps(config, phase) for phase in config.train.phases}


def phase_at(step: int, lengths: dict[str, int]) -> tuple[str | None, int]:
    """(phase, step within the phase) for a global step; (None, 0) once every phase is done."""
    start = 0
    for phase, length in lengths.items():
        if step < start + length:
            return phase, step - start
        start += length
    return None, 0


# ----------------------------------------------------------------------------- workdir


def _claim_workdir(workdir: Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json once; refuses a workdir that another configuration wrote."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "config.json"
    ours = json.loads(config.to_json_best_effort(sort_keys=True))
    if config_file.exists():
        theirs = json.loads(config_file.read_text())
        if _without_run_fields(theirs) != _without_run_fields(ours) and \
                not config.train.allow_config_change:
            raise UserError(
                f"{workdir} holds a run with another configuration ({config_file}); use a new "
                "--workdir or pass --config.train.allow_config_change=True")
    if jax.process_index() == 0:
        tmp = config_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(ours, indent=2, sort_keys=True))
        tmp.replace(config_file)


def _without_run_fields(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Fields that may change between a run and its resumption without changing the method."""
    trimmed = json.loads(json.dumps(config_dict))
    for field in ("allow_config_change", "distributed", "log_every_steps", "image_every_steps",
                  "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        trimmed.get("train", {}).pop(field, None)
    return trimmed


# ----------------------------------------------------------------------------- sharding


def make_mesh() -> jax.sharding.Mesh:
    # Auto axes: XLA propagates shardings through the networks' reshapes (pixel shuffle, Haar);
    # only the step's inputs and outputs carry explicit shardings.
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, Any]:
    return {name: jax.make_array_from_process_local_data(sharding, value)
            for name, value in local_batch.items()}


# ----------------------------------------------------------------------------- preemption


class StopRequest:
    """Set by SIGTERM/SIGINT (a TPU VM preemption or Ctrl-C); checked between steps."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal API)
        self.signal_name = signal.Signals(signum).name

    def requested(self) -> bool:
        local = self.signal_name is not None
        if jax.process_count() == 1:
            return local
        # Every host must agree, or the ones that stop would hang the others' collectives.
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(local))))


# ----------------------------------------------------------------------------- inputs and outputs


def train_stream(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
    """This process's slots of every global batch, from `start_step` on (restorable by step)."""
    from lfcsr_jax import input_pipeline

    return input_pipeline.create_train_iterator(
        config.input, scale=config.model.scale,
        global_batch_size=config.train.global_batch_size, seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())


def load_vgg_params(config: ml_collections.ConfigDict, networks: Any) -> Any:
    """Frozen VGG19Weights (params + the input convention they expect): converted ImageNet
    weights when configured, else random (demo)."""
    if config.loss.vgg_weights:
        from lfcsr_jax import vgg_weights

        return vgg_weights.load_vgg19_weights(config.loss.vgg_weights)
    logging.warning("loss.vgg_weights is empty: the contextual loss uses a RANDOM VGG19 "
                    "(fine for tests and the demo; convert ImageNet weights for real training)")
    return admm.init_vgg_params(jax.random.PRNGKey(config.seed + 1), config, networks)


def maybe_load_init_checkpoint(config: ml_collections.ConfigDict, state: Any) -> Any:
    """Starts from an export (e.g. a converted authors' model or a pre-trained run)."""
    if not config.train.init_checkpoint:
        return state
    model_cfg, params = checkpointing.load_export(config.train.init_checkpoint)
    ours = config.model.to_dict()
    mismatched = [k for k in ours if k != "dtype" and k in model_cfg and
                  _as_plain(model_cfg[k]) != _as_plain(ours[k])]
    if mismatched:
        raise UserError(f"train.init_checkpoint={config.train.init_checkpoint!r}: model fields "
                        f"{mismatched} differ from config.model")
    logging.info("Initialising generators from %s", config.train.init_checkpoint)
    replicated = NamedSharding(make_mesh(), PartitionSpec())

    def placed(new_tree: Any, old_tree: Any) -> Any:
        shapes_old = jax.tree_util.tree_map(np.shape, old_tree)
        shapes_new = jax.tree_util.tree_map(np.shape, new_tree)
        if shapes_old != shapes_new:
            raise UserError(f"train.init_checkpoint={config.train.init_checkpoint!r}: parameter "
                            "tree or shapes differ from the configured model")
        return jax.device_put(jax.tree_util.tree_map(jnp.asarray, new_tree), replicated)

    return state.replace(
        objective_params=placed(params["objective"], state.objective_params),
        perceptual_params=placed(params["perceptual"], state.perceptual_params))


def _as_plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def export_generators(config: ml_collections.ConfigDict, state: Any, workdir: Path,
                      step: int) -> Path:
    """Writes generator params + model config for the evaluation programs (process 0 only)."""
    export_dir = workdir / "export"
    params = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)),
                                    admm.generator_params(state))
    if jax.process_index() == 0:
        checkpointing.save_export(export_dir, params, config.model.to_dict(),
                                  extra_info={"step": step,
                                              "config": json.loads(config.to_json_best_effort())},
                                  overwrite=True)
    return export_dir


# ----------------------------------------------------------------------------- the loop


def _compile_steps(networks: Any, shardings: Any, batch_sharding: NamedSharding,
                   mesh: jax.sharding.Mesh) -> dict[str, Callable]:
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_shardings = {"lr": batch_sharding, "hr": batch_sharding}
    pretrain = jax.jit(
        functools.partial(admm.pretrain_step, networks=networks),
        in_shardings=(shardings, batch_shardings, replicated),
        out_shardings=(shardings, replicated), donate_argnums=0)
    admm_jit = jax.jit(
        functools.partial(admm.admm_step, networks=networks),
        in_shardings=(shardings, batch_shardings, replicated, replicated),
        out_shardings=(shardings, replicated), donate_argnums=0)
    return {"pretrain": pretrain, "admm": admm_jit}


def _run_step(steps: dict[str, Callable], phase: str, state: Any, batch: dict[str, Any],
              vgg_params: Any, rng: jax.Array) -> tuple[Any, dict[str, Any]]:
    if phase == "pretrain":
        return steps["pretrain"](state, batch, vgg_params)
    return steps["admm"](state, batch, vgg_params, rng)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Runs (or resumes) the configured phases; returns the process exit code."""
    validate_config(config)
    workdir_path = Path(workdir).absolute()
    _claim_workdir(workdir_path, config)
    mesh = make_mesh()
    networks = admm.make_networks(config)
    # Placed once, replicated: the jitted steps then never copy the frozen VGG19 per step.
    vgg_params = jax.device_put(load_vgg_params(config, networks),
                                NamedSharding(mesh, PartitionSpec()))

    rng = jax.random.PRNGKey(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    abstract_state = jax.eval_shape(
        functools.partial(admm.init_train_state, config=config, networks=networks), init_rng)
    shardings = admm.state_shardings(abstract_state, mesh)
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    checkpoints = checkpointing.TrainCheckpoints(
        workdir_path / "checkpoints", keep=config.train.keep_checkpoints,
        best_metrics=validation.best_metric_modes(config))

    restored = checkpoints.restore_latest(
        jax.tree_util.tree_map(lambda leaf, sharding: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=sharding), abstract_state, shardings))
    if restored is not None:
        state, record = restored
        start_step = int(record["step"])
        logging.info("Resuming from %s at step %d", checkpoints.directory, start_step)
    else:
        # The classic threefry compiles the scanned blocks' init several times faster on CPU
        # (the initial values are still a pure function of config.seed).
        with jax.threefry_partitionable(False):
            state = jax.jit(functools.partial(admm.init_train_state, config=config,
                                              networks=networks),
                            out_shardings=shardings)(init_rng)
        state = maybe_load_init_checkpoint(config, state)
        start_step = 0

    lengths = phase_lengths(config)
    total_steps = sum(lengths.values())
    writer = train_logging.MetricsWriter(workdir_path, config, total_steps)
    validator = validation.Validator(config, networks)
    steps = _compile_steps(networks, shardings, batch_sharding, mesh)
    stream = train_stream(config, start_step)
    stop = StopRequest()
    stop.install()
    try:
        exit_code = _loop(config, state, start_step, total_steps, lengths, stream, steps,
                          vgg_params, step_rng, batch_sharding, checkpoints, writer, validator,
                          stop, workdir_path)
    finally:
        stop.uninstall()
        checkpoints.close()
        writer.close()
    return exit_code


def _record(step: int, lengths: dict[str, int], extra: dict[str, Any] | None = None) -> dict:
    phase, _ = phase_at(step, lengths)
    record = {"step": step, "phase": phase or "done", "data_position": step}
    record.update(extra or {})
    return record


def _loop(config, state, start_step, total_steps, lengths, stream: Iterator[dict], steps,
          vgg_params, step_rng, batch_sharding, checkpoints, writer, validator, stop,
          workdir: Path) -> int:
    train_cfg = config.train
    pending: tuple[int, str, Any] | None = None  # metrics fetched one step late
    step = start_step
    last_validation: dict[str, float] = {}
    while step < total_steps:
        if stop.requested():
            writer.flush_pending(pending)
            if checkpoints.latest_step() != step:  # the periodic save may have just run
                checkpoints.save(step, state, _record(step, lengths), force=True)
            checkpoints.wait_until_finished()
            print(f"Stopped by {stop.signal_name or 'a signal'} at step {step}; checkpoint "
                  f"saved in {checkpoints.directory}. Rerun the same command to resume.",
                  flush=True)
            return 0
        phase, _ = phase_at(step, lengths)
        wait_start = time.perf_counter()
        local_batch = next(stream)
        batch = global_batch(local_batch, batch_sharding)
        writer.add_input_wait(time.perf_counter() - wait_start)
        state, metrics = _run_step(steps, phase, state, batch, vgg_params,
                                   jax.random.fold_in(step_rng, step))
        if pending is not None and not writer.write_step_metrics(*pending):
            return _stop_non_finite(pending[0], checkpoints)
        pending = (step, phase, metrics)
        step += 1
        if step % train_cfg.image_every_steps == 0:
            writer.write_samples(step, validator.sample_images(state, local_batch))
        if step % train_cfg.eval_every_steps == 0 or step == total_steps:
            last_validation = validator.validate(state, step, writer)
        if step % train_cfg.checkpoint_every_steps == 0 or step == total_steps:
            if not writer.write_step_metrics(*pending):
                return _stop_non_finite(pending[0], checkpoints)
            pending = None
            checkpoints.save(step, state, _record(step, lengths, last_validation))
            if last_validation and step % train_cfg.eval_every_steps == 0:
                checkpoints.save_best(step, state, _record(step, lengths, last_validation),
                                      last_validation)
    if pending is not None and not writer.write_step_metrics(*pending):
        return _stop_non_finite(pending[0], checkpoints)
    checkpoints.wait_until_finished()
    export_dir = export_generators(config, state, workdir, step)
    if not last_validation:
        last_validation = validator.validate(state, step, writer)
    validator.write_summary(workdir, step, last_validation, export_dir)
    return 0


def _stop_non_finite(step: int, checkpoints: checkpointing.TrainCheckpoints) -> int:
    checkpoints.wait_until_finished()
    latest = checkpoints.latest_step()
    print(f"Non-finite loss or input at step {step}: the update was not applied and training "
          f"stopped. The last good checkpoint (step {latest}) in {checkpoints.directory} is "
          "intact.", flush=True)
    return 3
