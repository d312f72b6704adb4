"""Training patches per second of the input pipeline, from images already decoded in memory.

  python tools/bench_input.py [--hr_dir DIR] [--lr_patch 36] [--batch 16] [--seconds 10]

Images: --hr_dir, else ../shared/data/train_photos/HR beside the checkout, else scikit-image's
bundled photos. Decoding and the LR imresize happen once, before timing; the timed part is what a
training run pays per step: crop + flips + batching + prefetch + conversion to numpy.
Prints one JSON line; patches_per_cpu_s (patches per second of this process' CPU time) is the
figure to compare when other work shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from configs.x4 import get_config  # noqa: E402
from lfcsr_jax.input import input_pipeline  # noqa: E402

DEFAULT_PHOTOS = REPO_ROOT.parent / "shared" / "data" / "train_photos" / "HR"


def _input_config(hr_dir: str, lr_patch: int):
    cfg = get_config().input
    cfg.lr_patch = lr_patch
    if hr_dir:
        cfg.source, cfg.hr_dir = "folder", hr_dir
    elif DEFAULT_PHOTOS.is_dir():
        cfg.source, cfg.hr_dir = "folder", str(DEFAULT_PHOTOS)
    else:
        cfg.source = "skimage"
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hr_dir", default="", help="folder of HR images")
    parser.add_argument("--lr_patch", type=int, default=36, help="LR patch (HR = 4x)")
    parser.add_argument("--batch", type=int, default=16, help="global batch size")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed duration")
    parser.add_argument("--warmup_batches", type=int, default=20)
    args = parser.parse_args()

    cfg = _input_config(args.hr_dir, args.lr_patch)
    start = time.perf_counter()
    iterator = input_pipeline.create_train_iterator(cfg, 4, args.batch, seed=0)
    for _ in range(args.warmup_batches):
        next(iterator)
    setup_s = time.perf_counter() - start

    patches, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < args.seconds:
        batch = next(iterator)
        patches += batch["hr"].shape[0]
    elapsed = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start  # all of this process' threads (tf.data's too).
    print(json.dumps({
        "source": cfg.hr_dir or cfg.source, "hr_patch": args.lr_patch * 4, "batch": args.batch,
        "patches_per_s": round(patches / elapsed, 1),
        # Less sensitive to other processes on the machine than the wall-clock rate.
        "patches_per_cpu_s": round(patches / cpu_s, 1), "batches": patches // args.batch,
        "seconds": round(elapsed, 2), "setup_s": round(setup_s, 2), "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
