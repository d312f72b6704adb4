"""Entry point: `python -m lfcsr_jax.main --config=configs/x4.py --workdir=DIR`.

Thin on purpose (flax examples/imagenet/main.py): flags, keep TensorFlow off the accelerator,
optional multi-host start-up, then one call into `train.train_and_evaluate`.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, samples and the export.")
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file, e.g. configs/x4.py or configs/x4.py:demo.",
    lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # imported here so the flags parse first

    # TensorFlow only reads data; it must never grab GPU memory from JAX.
    tf.config.set_visible_devices([], "GPU")

    from lfcsr_jax import train

    config = FLAGS.config
    train.validate_config(config)  # fail on bad values before any device work
    if config.train.distributed:
        import jax

        jax.distributed.initialize()
    import jax

    logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
                 jax.process_count(), jax.local_devices())
    return train.train_and_evaluate(config, FLAGS.workdir)


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
