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
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from lfcsr_jax import configuration, paths
# A configuration or input problem, reported as one clear line before any compute (main.py).
from lfcsr_jax.errors import UserError
from lfcsr_jax.input import input_pipeline
from lfcsr_jax.models.generator import EXECUTION_FIELDS
from lfcsr_jax.training import (checkpointing, loop, schedules, steps, train_logging, train_state,
                                validation)
# validate_config is also reached as train.validate_config (main, sweep, tests).
from lfcsr_jax.training.config_checks import validate_config
from lfcsr_jax.training.preemption import StopRequest
from lfcsr_jax.weights import exports, vgg_weights


def phase_lengths(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Steps of each configured phase, in order (epochs -> steps happens in schedules.py)."""
    return {phase: schedules.phase_steps(config, phase) for phase in config.train.phases}


# ----------------------------------------------------------------------------- workdir


def _claim_workdir(workdir: paths.Path, config: ml_collections.ConfigDict) -> None:
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
        paths.write_text_atomic(config_file, json.dumps(ours, indent=2, sort_keys=True))


def _without_run_fields(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Fields that may change between a run and its resumption without changing the method."""
    trimmed = json.loads(json.dumps(config_dict))
    for field in ("allow_config_change", "distributed", "log_every_steps", "tensorboard_dir",
                  "image_every_steps",
                  "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        trimmed.get("train", {}).pop(field, None)
    return trimmed


# ----------------------------------------------------------------------------- sharding


def make_mesh() -> jax.sharding.Mesh:
    # Auto axes: XLA propagates shardings through the networks' reshapes (pixel shuffle, Haar);
    # only the step's inputs and outputs carry explicit shardings.
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))


# ----------------------------------------------------------------------------- inputs and outputs


def train_stream(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
    """This process's slots of every global batch, from `start_step` on (restorable by step)."""
    return input_pipeline.create_train_iterator(
        config.input, scale=config.model.scale,
        global_batch_size=config.train.global_batch_size, seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())


def load_vgg_params(config: ml_collections.ConfigDict, networks: Any) -> Any:
    """Frozen VGG19Weights (params + the input convention they expect): converted ImageNet
    weights when configured, else random (demo)."""
    if config.loss.vgg_weights:
        return vgg_weights.load_vgg19_weights(config.loss.vgg_weights)
    logging.warning("loss.vgg_weights is empty: the contextual loss uses a RANDOM VGG19 "
                    "(fine for tests and the demo; convert ImageNet weights for real training)")
    return train_state.init_vgg_params(jax.random.PRNGKey(config.seed + 1), config, networks)


def maybe_load_init_checkpoint(config: ml_collections.ConfigDict, state: Any) -> Any:
    """Starts from an export (e.g. a converted authors' model or a pre-trained run)."""
    if not config.train.init_checkpoint:
        return state
    model_cfg, params = exports.load_export(config.train.init_checkpoint)
    ours = config.model.to_dict()
    mismatched = [k for k in ours if k not in EXECUTION_FIELDS and k in model_cfg and
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


def export_generators(config: ml_collections.ConfigDict, state: Any, workdir: paths.Path,
                      step: int) -> paths.Path:
    """Writes generator params + model config for the evaluation programs (process 0 only)."""
    export_dir = workdir / "export"
    params = jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)),
                                    train_state.generator_params(state))
    if jax.process_index() == 0:
        exports.save_export(export_dir, params, config.model.to_dict(),
                                  extra_info={"step": step,
                                              "config": json.loads(config.to_json_best_effort())},
                                  overwrite=True)
    return export_dir


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> int:
    """Runs (or resumes) the configured phases; returns the process exit code."""
    validate_config(config)
    workdir_path = paths.location(workdir)
    _claim_workdir(workdir_path, config)
    mesh = make_mesh()
    networks = train_state.make_networks(config)
    # Placed once, replicated: the jitted steps then never copy the frozen VGG19 per step.
    vgg_params = jax.device_put(load_vgg_params(config, networks),
                                NamedSharding(mesh, PartitionSpec()))

    rng = jax.random.PRNGKey(config.seed)
    # The first of two keys, as when the second seeded the steps: runs and checkpoints made since
    # keep the same initial parameters for the same config.seed.
    init_rng = jax.random.split(rng)[0]
    abstract_state = jax.eval_shape(
        functools.partial(train_state.init_train_state, config=config, networks=networks), init_rng)
    shardings = train_state.state_shardings(abstract_state, mesh)
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
        # Rows logged after this checkpoint by the interrupted run are logged again below.
        train_logging.truncate_metrics(workdir_path, start_step)
    else:
        # The classic threefry compiles the scanned blocks' init several times faster on CPU
        # (the initial values are still a pure function of config.seed).
        with jax.threefry_partitionable(False):
            state = jax.jit(functools.partial(train_state.init_train_state, config=config,
                                              networks=networks),
                            out_shardings=shardings)(init_rng)
        state = maybe_load_init_checkpoint(config, state)
        start_step = 0
        train_logging.truncate_metrics(workdir_path, 0)  # rows of a run killed before step 1

    lengths = phase_lengths(config)
    writer = train_logging.MetricsWriter(workdir_path, config, sum(lengths.values()))
    validator = validation.Validator(config, networks)
    train_cfg = config.train
    stop = StopRequest()
    # A stop signal during a compile exits at once; no checkpoint save may then be in flight.
    train_steps = stop.guard_compiles(
        steps.make_train_steps(networks, shardings, mesh),
        lambda: (checkpoints.wait_until_finished(), writer.writer.flush()))
    trainer = loop.TrainLoop(
        steps=train_steps, lengths=lengths, vgg_params=vgg_params, batch_sharding=batch_sharding,
        stream=train_stream(config, start_step), writer=writer, stop=stop,
        checkpoints=checkpoints,
        hooks=[loop.SampleImages(train_cfg.image_every_steps, validator, writer),
               loop.Validate(train_cfg.eval_every_steps, validator, writer),
               loop.SaveCheckpoint(train_cfg.checkpoint_every_steps, train_cfg.eval_every_steps)])
    trainer.stop.install()
    try:
        exit_code = trainer.run(state, start_step)
        if exit_code == 0 and trainer.step == trainer.total_steps:
            _finish(config, trainer, validator, writer, workdir_path)
    finally:
        trainer.stop.uninstall()
        checkpoints.close()
        writer.close()
    return exit_code


def _finish(config: ml_collections.ConfigDict, trainer: loop.TrainLoop,
            validator: validation.Validator, writer: train_logging.MetricsWriter,
            workdir: paths.Path) -> None:
    """After the last step: the generator export, a final validation if none ran, summary.md."""
    export_dir = export_generators(config, trainer.state, workdir, trainer.step)
    scores = trainer.last_validation or validator.validate(trainer.state, trainer.step, writer)
    validator.write_summary(workdir, trainer.step, scores, export_dir)
