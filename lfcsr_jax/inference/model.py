"""An export loaded and jitted: `load_model` -> `LoadedModel.predict(lr) -> (Y', Y)`.

* `LoadedModel.compiled_shapes`: the distinct (stage, input shape, unmasked) programs this model
  ran, i.e. the compiles it caused (or loaded from the persistent cache, compile_cache.py).
* Checkpoints may be local folders or gs:// URIs (lfcsr_jax.paths).
* Every image runs in its bucket with a valid-pixel mask (settings.py); a batch that fills its
  bucket exactly (no padding) runs the unmasked forward, unless the masked program of that
  bucket has already been compiled (then it reuses that one: no extra compile).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.inference.memory import estimate_activation_bytes
from lfcsr_jax.inference.settings import (BUCKET, InferenceError, batch_bucket, bucket_dim,
                                          resolve_dtype)
from lfcsr_jax.models import generator
from lfcsr_jax.weights import exports


@dataclasses.dataclass
class LoadedModel:
    """An export ready to run: `predict(lr HxWx3 uint8/float 0-255) -> (Y', Y)` float32 HxWx3."""

    config: dict[str, Any]
    params: Any  # cast to the compute dtype once, on the device
    apply_fn: Callable[..., tuple[Any, Any]]  # jitted (params, lr_Bxhxwx3, mask|None) -> (y_o, y_p)
    objective_fn: Callable[..., Any]  # jitted (params['objective'], lr, mask|None) -> y_o
    perceptual_fn: Callable[..., Any]  # jitted (params['perceptual'], y_o, mask|None) -> y_p
    bucket: int = BUCKET  # 0: exact shapes (one compile per image size)
    compiled_shapes: set = dataclasses.field(default_factory=set)
    _lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False)

    @property
    def scale(self) -> int:
        return int(self.config["scale"])

    @property
    def compile_count(self) -> int:
        return len(self.compiled_shapes)

    def bucketed_lr_shape(self, h: int, w: int) -> tuple[int, int]:
        return bucket_dim(h, self.bucket), bucket_dim(w, self.bucket)

    def _run(self, stage: str, fn: Callable, params: Any, images: Sequence[np.ndarray],
             out_scale: int, step: int) -> list[Any]:
        """`fn` on `images` (same bucket) padded into one batch with their mask; cropped outputs."""
        shapes = [np.shape(x)[:2] for x in images]
        if step <= 0:
            if len(set(shapes)) != 1:
                raise ValueError(f"exact-shape batches need one image size, got {shapes}")
            x = np.stack([np.asarray(i, np.float32) for i in images])
            key, mask = (stage, x.shape, True), None
        else:
            hb = max(bucket_dim(h, step) for h, _ in shapes)
            wb = max(bucket_dim(w, step) for _, w in shapes)
            b = batch_bucket(len(images))
            x = np.zeros((b, hb, wb, 3), np.float32)
            mask = np.zeros((b, hb, wb, 1), np.float32)
            for k, (img, (h, w)) in enumerate(zip(images, shapes)):
                x[k, :h, :w] = img
                mask[k, :h, :w] = 1.0
        with self._lock:
            if mask is not None:
                # A batch that fills its bucket has no padding to zero: the unmasked forward is
                # the same math in fewer kernels (docs/design.md section 13), but a program of
                # its own, so it runs only where the masked one has not been compiled already.
                masked_key = (stage, x.shape, False)
                if mask.min() == 1.0 and masked_key not in self.compiled_shapes:
                    mask = None
                key = (stage, x.shape, mask is None)
            self.compiled_shapes.add(key)
            out = fn(params, x, mask)
        outs = out if isinstance(out, tuple) else (out,)
        outs = [np.asarray(o, dtype=np.float32) for o in outs]
        result = []
        for k, (h, w) in enumerate(shapes):
            crop = tuple(o[k, :h * out_scale, :w * out_scale] for o in outs)
            result.append(crop if isinstance(out, tuple) else crop[0])
        return result

    def predict_batch(self, lrs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(Y', Y) of several LR images in ONE forward (pad them to a common bucket)."""
        return self._run("both", self.apply_fn, self.params, lrs, self.scale, self.bucket)

    def predict(self, lr_hxwx3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.predict_batch([lr_hxwx3])[0]

    def objective(self, lr_hxwx3: np.ndarray) -> np.ndarray:
        """Y' = G_O(lr) alone, float32 HxWx3."""
        return self._run("objective", self.objective_fn, self.params["objective"], [lr_hxwx3],
                         self.scale, self.bucket)[0]

    def perceptual(self, y_objective_hxwx3: np.ndarray) -> np.ndarray:
        """Y = G_P(Y') alone, float32 HxWx3 (H, W even)."""
        h, w = np.shape(y_objective_hxwx3)[:2]
        if h % 2 or w % 2:
            raise ValueError(f"G_P needs an even height and width, got {h}x{w}")
        # Bucketed on the HR grid in steps of (LR bucket) x scale: even, Haar-block aligned.
        return self._run("perceptual", self.perceptual_fn, self.params["perceptual"],
                         [y_objective_hxwx3], 1, self.bucket * self.scale)[0]

    def activation_bytes(self, h: int, w: int, batch: int = 1) -> int:
        """estimate_activation_bytes of an h x w LR image in its bucket."""
        hb, wb = self.bucketed_lr_shape(h, w)
        return estimate_activation_bytes(self.config, hb, wb, batch)


def load_model(checkpoint: str | os.PathLike, dtype: str = "",
               bucket: int = BUCKET) -> LoadedModel:
    """Reads an export (exports.save_export; a local folder or a gs:// URI) and jits the
    two-stage forward.

    `dtype`: '' / 'auto' = bfloat16 on GPU/TPU, float32 on CPU; or a named compute dtype. Params
    are cast to it once here; outputs are float32. `bucket`: see the module docstring.
    """
    import jax  # pylint: disable=import-outside-toplevel

    if not os.fspath(checkpoint):
        raise InferenceError("checkpoint '' does not exist (pass an export directory written by "
                             "save_export / the training program)")
    path = paths.location(checkpoint)
    if not path.exists():
        raise InferenceError(f"checkpoint {str(checkpoint)!r} does not exist (pass an export "
                             "directory written by save_export / the training program)")
    if not path.is_dir():
        raise InferenceError(f"checkpoint {path} is a file; pass an export directory (the "
                             "folder holding config.json and params/)")
    if (path / "export" / "config.json").is_file() or (path / "checkpoints").is_dir():
        raise InferenceError(f"checkpoint {path} is a training workdir, not an export; pass "
                             f"--checkpoint={path / 'export'}")
    dtype = resolve_dtype(dtype)
    if bucket < 0:
        raise InferenceError(f"--bucket={bucket} must be >= 0 (0 = exact shapes)")
    try:
        model_cfg, params = exports.load_export(path)
    except exports.CheckpointError as e:
        raise InferenceError(f"checkpoint {path}: {e}") from e
    check_params_match_config(path, model_cfg, params)
    model_cfg = dict(model_cfg)
    model_cfg["dtype"] = dtype
    fns = jitted_forwards(json.dumps(model_cfg, sort_keys=True))
    params = generator.cast_for_compute(jax.device_put(params), generator.compute_dtype(model_cfg))
    return LoadedModel(model_cfg, params, *fns, bucket=bucket)


def check_params_match_config(path: paths.Path, model_cfg: dict[str, Any], params: Any) -> None:
    """An export whose config.json no longer describes its params/ is named, not a flax error."""
    import jax  # pylint: disable=import-outside-toplevel

    try:
        model = generator.build_lfcsr(model_cfg)
        expected = jax.eval_shape(lambda k: generator.init_params(model, k, (1, 8, 8, 3)),
                                  jax.random.PRNGKey(0))
    except (KeyError, TypeError, ValueError) as e:
        raise InferenceError(f"checkpoint {path}: {path / 'config.json'} has an unusable "
                             f"model config ({e}); re-export the model") from e
    want = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    have = {jax.tree_util.keystr(k): tuple(np.shape(v))
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
    if want != have:
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        shown = ", ".join(f"{k} (config {want.get(k)}, params {have.get(k)})" for k in differ[:3])
        raise InferenceError(
            f"checkpoint {path}: config.json does not match params/ ({len(differ)} parameters "
            f"differ, e.g. {shown}); the export was edited or mixed up: re-export the model")


@functools.lru_cache(maxsize=8)
def jitted_forwards(model_cfg_json: str) -> tuple[Callable, Callable, Callable]:
    """(both stages, G_O, G_P) jitted, shared by every load of the same config, so a second load
    (evaluate then super_resolve, or tests) reuses the compiled executables. Each takes
    (params, x, mask): mask None runs the exact shape, else the bucketed masked forward."""
    import jax  # pylint: disable=import-outside-toplevel

    model_cfg = json.loads(model_cfg_json)
    model = generator.build_lfcsr(model_cfg)
    objective = generator.build_objective(model_cfg)
    perceptual = generator.build_perceptual(model_cfg)

    def apply(p, lr_Bxhxwx3, mask=None):
        y_objective, y_perceptual = generator.apply_generator(model, p, lr_Bxhxwx3, mask)
        return y_objective.astype("float32"), y_perceptual.astype("float32")

    def apply_objective(p, lr_Bxhxwx3, mask=None):
        return generator.apply_generator(objective, p, lr_Bxhxwx3, mask).astype("float32")

    def apply_perceptual(p, y_BxHxWx3, mask=None):
        return generator.apply_generator(perceptual, p, y_BxHxWx3, mask).astype("float32")

    return jax.jit(apply), jax.jit(apply_objective), jax.jit(apply_perceptual)
