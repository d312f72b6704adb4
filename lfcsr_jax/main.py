"""Entry point: `python -m lfcsr_jax.main --config=configs/x4.py --workdir=DIR`.

Thin on purpose (flax examples/imagenet/main.py): flags, keep TensorFlow off the accelerator,
optional multi-host start-up, then one call into `train.train_and_evaluate`.
"""

from __future__ import annotations

import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lfcsr_jax import runtime

    runtime.configure()  # GPU runtime settings (CUDA graphs), before the JAX backend starts
    _quiet_orbax_info()
    import tensorflow as tf  # imported here so the flags parse first

    # TensorFlow only reads data; it must never grab GPU memory from JAX.
    tf.config.set_visible_devices([], "GPU")

    from lfcsr_jax import train

    import jax

    config = FLAGS.config
    if config.train.distributed:
        # Before anything touches a device. CPU processes exchange gradients through gloo
        # (the setting is ignored by GPU/TPU backends).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)
    train.validate_config(config)  # fail on bad values before anything compiles

    logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
                 jax.process_count(), jax.local_devices())
    return train.train_and_evaluate(config, FLAGS.workdir)


class _DropOrbaxInfo(logging_std.Filter):
    """Orbax logs every file it writes at INFO; keep its warnings, drop the chatter."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return record.levelno >= logging_std.WARNING or "orbax" not in record.pathname


def _quiet_orbax_info() -> None:
    logging.get_absl_handler().addFilter(_DropOrbaxInfo())


def run() -> None:
    try:
        app.run(main)
    except Exception as error:  # a clean one-line message for configuration/input errors
        from lfcsr_jax.train import UserError

        if isinstance(error, UserError):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    run()
