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
import os
import signal
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from lfcsr_jax import configuration, paths
from lfcsr_jax.training import (checkpointing, loop, schedules, steps, train_logging, train_state,
                                validation)
# A configuration or input problem, reported as one clear line before any compute (main.py).
from lfcsr_jax.errors import UserError
from lfcsr_jax.weights import exports


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
    problems += configuration.enum_problems(config)
    problems += _check_vgg_input(config.loss)
    unknown_phases = [p for p in train.phases if p not in configuration.PHASES]
    if unknown_phases or not train.phases:
        problems.append(f"train.phases={tuple(train.phases)}: expected a non-empty subset of "
                        f"{configuration.PHASES}")
    batch = train.global_batch_size
    devices, processes = jax.device_count(), jax.process_count()
    if batch <= 0:
        problems.append(f"train.global_batch_size={batch} must be positive")
    elif batch % devices or batch % processes:
        problems.append(f"train.global_batch_size={batch} must be divisible by the device count "
                        f"({devices}) and the process count ({processes})")
    problems += _check_input_paths(inp)
    for field, path in (("loss.vgg_weights", config.loss.vgg_weights),
                        ("train.init_checkpoint", train.init_checkpoint),
                        ("train.lpips_dir", train.lpips_dir)):
        if path and not paths.location(path).exists():
            problems.append(f"{field}={path!r}: no such file or directory")
    problems += _check_weight_paths(config)
    if train.lpips_dir and paths.location(train.lpips_dir).is_dir():
        from lfcsr_jax.evaluation import lpips

        try:
            lpips.find_lpips_files(train.lpips_dir)
        except lpips.MetricUnavailable as missing:
            problems.append(f"train.lpips_dir: {missing}")
    for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps",
                  "image_every_steps", "keep_checkpoints"):
        if train[field] <= 0:
            problems.append(f"train.{field}={train[field]} must be positive")
    if not problems:
        problems += _check_training_images(inp)  # reads files: only once the rest is sound
    if problems:
        raise UserError("invalid configuration: " + "; ".join(problems))


def _check_weight_paths(config: ml_collections.ConfigDict) -> list[str]:
    """vgg_weights must be a convert-vgg19 .npz; init_checkpoint an export, not a workdir."""
    problems = []
    vgg_text, init_text = config.loss.vgg_weights, config.train.init_checkpoint
    vgg = paths.location(vgg_text) if vgg_text else None
    init = paths.location(init_text) if init_text else None
    if vgg is not None and vgg.exists() and (vgg.is_dir() or vgg.suffix != ".npz"):
        problems.append(f"loss.vgg_weights={vgg_text!r}: expected the .npz written by "
                        "`python -m lfcsr_jax.convert vgg19 --input ... --output vgg19.npz`")
    if init is not None and init.exists():
        if (init / "export" / "config.json").is_file() or (init / "checkpoints").is_dir():
            problems.append(f"train.init_checkpoint={str(init)!r} is a training workdir; pass "
                            f"its export, {str(init / 'export')!r}")
        elif not (init / "config.json").is_file():
            problems.append(f"train.init_checkpoint={str(init)!r}: not an export directory (no "
                            "config.json; see exports.save_export / convert pdasr)")
    return problems


def _check_training_images(inp: ml_collections.ConfigDict) -> list[str]:
    """Names a truncated or unreadable image file in the folders before the ~30 s of set-up.

    PIL's verify() reads every chunk and checks the PNG CRCs without decoding pixels, so a
    truncated file is found at a fraction of the cost of the decode that follows.
    """
    folders = [inp[f] for f in ("hr_dir", "lr_dir", "val_hr_dir", "val_lr_dir")
               if inp.source in ("folder", "paired") and inp[f]
               and paths.location(inp[f]).is_dir()]
    return [problem for folder in folders for problem in _unreadable_images(str(folder))]


@functools.lru_cache(maxsize=16)  # a folder is verified once per process
def _unreadable_images(folder: str) -> tuple[str, ...]:
    from PIL import Image

    from lfcsr_jax.input import image_io

    problems = []
    for folder in [folder]:
        try:
            files = image_io.list_images(folder)
        except FileNotFoundError as e:
            problems.append(str(e))
            continue
        for path in files:
            try:
                with paths.location(path).open("rb") as handle, Image.open(handle) as img:
                    img.verify()
            except Exception as e:  # noqa: BLE001 (PIL raises many types for broken files)
                problems.append(f"{path}: unreadable or truncated image ({type(e).__name__}: "
                                f"{e}); fix or remove it")
    return tuple(problems)


def _check_vgg_input(loss: ml_collections.ConfigDict) -> list[str]:
    """The scaling must exist and suit the input convention the weights file stores."""
    from lfcsr_jax.weights import vgg_weights

    if loss.vgg_input_scaling not in configuration.VGG_INPUT_SCALINGS:
        return [f"loss.vgg_input_scaling={loss.vgg_input_scaling!r}: expected one of "
                f"{configuration.VGG_INPUT_SCALINGS}"]
    if not loss.vgg_weights or not paths.location(loss.vgg_weights).is_file():
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
        elif not paths.location(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    for field in ("val_hr_dir", "val_lr_dir"):
        if inp[field] and not paths.location(inp[field]).is_dir():
            problems.append(f"input.{field}={inp[field]!r}: no such directory")
    return problems


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


# ----------------------------------------------------------------------------- preemption


class StopRequest:
    """Set by SIGTERM/SIGINT (a TPU VM preemption or Ctrl-C); checked between steps.

    One process: a Python handler records the signal and the loop saves and stops before the next
    step. Several processes (a TPU pod slice): every host must stop at the same step, or the ones
    that go on hang in collectives. There JAX's preemption service owns SIGTERM (its notifier is
    installed by `jax.distributed.initialize`): a notice on any host starts an agreement in the
    coordination service, and `multihost_utils.reached_preemption_sync_point(step)` turns True on
    every host at the same step, with no collective per step. SIGINT (Ctrl-C) is forwarded to
    that notifier as a SIGTERM to this process. Without the service (jax_enable_preemption_service
    off), the hosts fall back to an allgather of their local flags each step.

    A signal that arrives while a train step compiles (tens of seconds at the start and at the
    phase switch, during which Python signal handlers cannot run) ends the process at once
    through a watcher thread woken by `signal.set_wakeup_fd`: compiling first and then saving
    would overrun a preemption notice, and the last checkpoint still stands (any save in flight
    is awaited before each compile, see `guard_compiles`). Not under the preemption service: there
    every host stops together at the first sync point after the compile.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._compiling = False
        self._wakeup: tuple[int, int] | None = None
        self._previous_wakeup = -1
        self._sync_point = False  # JAX's preemption service decides when every host stops

    def install(self) -> None:
        self._sync_point = preemption_service_running()
        handled = (signal.SIGINT,) if self._sync_point else (signal.SIGTERM, signal.SIGINT)
        for sig in handled:
            self._previous[sig] = signal.signal(sig, self._handle)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        self._wakeup = (read_fd, write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                         name="stop-during-compile").start()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._wakeup[1])  # the watcher reads EOF and ends
            self._wakeup = None

    def _watch(self, read_fd: int) -> None:
        try:
            while True:
                received = os.read(read_fd, 1)
                if not received:
                    return
                # Under the preemption service one host must not leave alone: the others would
                # wait for it in collectives. They all stop at the next sync point instead.
                if (self._compiling and not self._sync_point
                        and received[0] in (signal.SIGTERM, signal.SIGINT)):
                    name = signal.Signals(received[0]).name
                    print(f"Stopped by {name} while a train step was compiling: exiting without "
                          "a new checkpoint (the last one stands). Rerun the same command to "
                          "resume.", flush=True)
                    os._exit(0)
        finally:
            os.close(read_fd)

    def guard_compiles(self, steps: dict[str, Callable],
                       before_compile: Callable[[], None]) -> dict[str, Callable]:
        """The steps, each marking its first call (trace + compile) as a compile window."""

        def guarded(name: str, fn: Callable) -> Callable:
            compiled = False

            def call(*args):
                nonlocal compiled
                if compiled:
                    return fn(*args)
                before_compile()  # no save in flight while an exit is possible
                logging.info("Compiling the %s step (a stop signal now exits at once, keeping "
                             "the last checkpoint)", name)
                self._compiling = True
                try:
                    out = fn(*args)
                finally:
                    self._compiling = False
                compiled = True
                return out

            return call

        return {name: guarded(name, fn) for name, fn in steps.items()}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 (signal API)
        self.signal_name = signal.Signals(signum).name
        if self._sync_point:  # hand Ctrl-C to the preemption service, which tells every host
            os.kill(os.getpid(), signal.SIGTERM)

    def requested(self, step: int) -> bool:
        """Whether to save and stop before `step`; True at the same step on every host."""
        if jax.process_count() == 1:
            return self.signal_name is not None
        from jax.experimental import multihost_utils

        if self._sync_point:
            if not multihost_utils.reached_preemption_sync_point(step):
                return False
            self.signal_name = self.signal_name or "a preemption notice (SIGTERM on some host)"
            return True
        # Every host must agree, or the ones that stop would hang the others' collectives.
        local = np.array(self.signal_name is not None)
        return bool(np.any(multihost_utils.process_allgather(local)))


def preemption_service_running() -> bool:
    """True in a multi-process run whose JAX preemption sync manager is up."""
    if jax.process_count() == 1:
        return False
    try:
        from jax._src import distributed  # the manager has no public accessor
    except ImportError:
        return False
    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


# ----------------------------------------------------------------------------- inputs and outputs


def train_stream(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
    """This process's slots of every global batch, from `start_step` on (restorable by step)."""
    from lfcsr_jax.input import input_pipeline

    return input_pipeline.create_train_iterator(
        config.input, scale=config.model.scale,
        global_batch_size=config.train.global_batch_size, seed=config.seed,
        start_step=start_step, process_index=jax.process_index(),
        process_count=jax.process_count())


def load_vgg_params(config: ml_collections.ConfigDict, networks: Any) -> Any:
    """Frozen VGG19Weights (params + the input convention they expect): converted ImageNet
    weights when configured, else random (demo)."""
    if config.loss.vgg_weights:
        from lfcsr_jax.weights import vgg_weights

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
    from lfcsr_jax.models.generator import EXECUTION_FIELDS

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
    init_rng, _ = jax.random.split(rng)  # the second key once seeded the steps; kept for equal init
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
