"""Entry point: `python -m lfcsr_jax.main --config=configs/x4.py --workdir=DIR`.

Thin on purpose (flax examples/imagenet/main.py): flags, keep TensorFlow off the accelerator,
optional multi-host start-up, then one call into `train.train_and_evaluate`. User errors (an
unknown `--config.x.y` override, a bad value, a --workdir that is a file) end with one
`main: error: ...` line on stderr and exit status 2 (lfcsr_jax/errors.py), before any compute.
"""

from __future__ import annotations

import difflib
import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from lfcsr_jax import configuration, errors, paths

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and the export.")
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file, e.g. configs/x4.py or configs/x4.py:demo.",
    lock_config=True)
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process runs without a cluster manager: host:port of process 0 "
                    "(TPU pods and SLURM need none of these three flags).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if "://" not in FLAGS.workdir:  # local paths only; gs:// and the like are checked by writing
        paths.check_output_dir(FLAGS.workdir, "--workdir")
    from lfcsr_jax import object_store

    object_store.check_locations([("--workdir", FLAGS.workdir, False),
                                  *object_store.config_locations(FLAGS.config)])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lfcsr_jax import runtime

    runtime.configure()  # GPU runtime settings (CUDA graphs), before the JAX backend starts
    _quiet_orbax_info()
    import tensorflow as tf  # imported here so the flags parse first

    # TensorFlow only reads data; it must never grab GPU memory from JAX.
    tf.config.set_visible_devices([], "GPU")

    from lfcsr_jax.training import train

    import jax

    config = FLAGS.config
    if config.train.distributed:
        # Before anything touches a device. CPU processes exchange gradients through gloo
        # (the setting is ignored by GPU/TPU backends).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)
    logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
                 jax.process_count(), jax.local_devices())
    # train_and_evaluate checks the config first (train.validate_config), before any compute.
    return train.train_and_evaluate(config, FLAGS.workdir)


class _DropOrbaxInfo(logging_std.Filter):
    """Orbax logs every file it writes at INFO; keep its warnings, drop the chatter."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def _quiet_orbax_info() -> None:
    logging.get_absl_handler().addFilter(_DropOrbaxInfo())


def _flat_fields(tree: dict, prefix: str = "") -> list[str]:
    fields = []
    for key, value in tree.items():
        fields.append(prefix + key)
        if isinstance(value, dict):
            fields += _flat_fields(value, f"{prefix}{key}.")
    return fields


def check_config_overrides(argv: list[str]) -> None:
    """Names an unknown `--config.<field>` override (with close matches) before absl parses it.

    absl/ml_collections report it as three chained tracebacks ending in AttributeError: "'foo'".
    If the config file itself cannot be loaded here, absl's own parsing reports that.
    """
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv[1:]
                 if a.startswith("--config.")]
    if spec is None or not overrides:
        return
    try:
        fields = _flat_fields(configuration.load_config_file(spec).to_dict())
    except Exception:  # noqa: BLE001 (absl reports a config file that does not load)
        return
    for field in overrides:
        if field not in fields:
            leaves = [f for f in fields if "." in f]  # "train" is no useful match for "train.x"
            close = difflib.get_close_matches(field, leaves, n=4, cutoff=0.6)
            group = field.rpartition(".")[0]
            siblings = [f for f in fields if f.rpartition(".")[0] == group]
            hint = (f"close matches: {', '.join(close)}" if close else
                    f"fields of {group or 'the config'}: {', '.join(siblings)}")
            raise errors.UserError(f"unknown config field {field} in --config.{field} "
                                       f"({hint})")


def run() -> None:
    try:
        check_config_overrides(sys.argv)
        app.run(main)
    except errors.UserError as error:  # train.UserError, CheckpointError, ...
        errors.exit_with("main", error)


if __name__ == "__main__":
    run()
