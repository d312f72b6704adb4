"""gs:// locations against a local Cloud Storage emulator (tests/gcs_emulator.py).

Layers covered here through the emulator: etils.epath with gcsfs (every file the programs open)
and TensorStore (Orbax's array files). Not covered: TensorFlow's own GCS client, used by
tf.summary (TensorBoard event files) and by TFDS's TFRecord readers; its endpoint is compiled in
(no emulator setting), so those two stay tested on local paths only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lfcsr_jax import paths
from lfcsr_jax.training import checkpointing
from lfcsr_jax.weights import exports


def test_location_keeps_uris_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(paths.location("gs://bucket/run/")) == "gs://bucket/run"
    assert str(paths.location("run")) == str(tmp_path / "run")
    assert paths.is_remote("gs://b/x") and not paths.is_remote(tmp_path)
    with pytest.raises(ValueError, match="gs://b/x"):
        paths.local_path("gs://b/x")


def test_atomic_write_local_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "a.json"
    paths.write_text_atomic(target, "old")
    paths.write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_and_read_back_on_gcs(gcs_root):
    target = paths.location(f"{gcs_root}/sub/a.txt")
    paths.write_text_atomic(target, "hello")
    assert target.read_text() == "hello"
    assert paths.location(gcs_root).joinpath("sub").is_dir()
    paths.remove_tree(f"{gcs_root}/sub")
    assert not target.exists()


def _generator_tree(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {name: {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}}
            for name in exports.GENERATOR_KEYS}


def test_export_round_trip_and_replacement_on_gcs(gcs_root):
    export = f"{gcs_root}/export"
    exports.save_export(export, _generator_tree(0), {"n_feats": 4})
    model, params = exports.load_export(export)
    assert model == {"n_feats": 4}
    np.testing.assert_array_equal(params["objective"]["conv"]["kernel"],
                                  _generator_tree(0)["objective"]["conv"]["kernel"])
    with pytest.raises(checkpointing.CheckpointError, match="already exists"):
        exports.save_export(export, _generator_tree(1), {"n_feats": 4})
    exports.save_export(export, _generator_tree(1), {"n_feats": 8}, overwrite=True)
    model, params = exports.load_export(export)
    assert model == {"n_feats": 8}
    np.testing.assert_array_equal(params["perceptual"]["conv"]["kernel"],
                                  _generator_tree(1)["perceptual"]["conv"]["kernel"])
    info = json.loads(paths.location(export).joinpath("config.json").read_text())
    assert info["format"] == exports.EXPORT_FORMAT


def test_export_without_its_marker_is_refused_on_gcs(gcs_root):
    export = paths.location(f"{gcs_root}/export")
    exports.save_export(export, _generator_tree(0), {"n_feats": 4})
    (export / "config.json").unlink()  # what a reader sees mid-replacement or after a crash
    with pytest.raises(checkpointing.CheckpointError, match="no config.json"):
        exports.load_export(export)


def test_damaged_checkpoint_on_gcs_is_set_aside(gcs_root):
    manager = checkpointing.TrainCheckpoints(gcs_root, keep=3)
    for step in (1, 2):
        manager.save(step, {"w": np.full((4,), step, np.float32)}, {"step": step})
    manager.close()
    newest = paths.location(f"{gcs_root}/latest/2/checksums/metadata")
    newest.write_text(newest.read_text()[:20])  # a truncated record
    manager = checkpointing.TrainCheckpoints(gcs_root, keep=3)
    state, record = manager.restore_latest({"w": np.zeros((4,), np.float32)})
    assert record["step"] == 1 and float(state["w"][0]) == 1.0
    assert not paths.location(f"{gcs_root}/latest/2").exists()
    assert paths.location(f"{gcs_root}/damaged/latest-2-checksums/checksums/metadata").is_file()
    assert manager.latest_step() == 1
    manager.close()
