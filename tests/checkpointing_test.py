"""The generator export format and the training checkpoint manager."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lfcsr_jax import checkpointing


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"objective": {"conv": {"kernel": rng.standard_normal((3, 3, 3, 4)).astype(np.float32)}},
            "perceptual": {"gamma": np.float32(0.25) * np.ones((), np.float32)}}


def test_export_round_trip(tmp_path):
    target = checkpointing.save_export(tmp_path / "export", _params(), {"scale": 4, "rgb_mean": (1, 2, 3)},
                                       extra_info={"step": 7})
    model_cfg, params = checkpointing.load_export(target)
    assert model_cfg == {"scale": 4, "rgb_mean": [1, 2, 3]}
    np.testing.assert_array_equal(params["objective"]["conv"]["kernel"],
                                  _params()["objective"]["conv"]["kernel"])
    assert json.loads((target / "config.json").read_text())["step"] == 7
    # No staging folder is left beside the export.
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_export_refuses_overwrite_and_bad_trees(tmp_path):
    checkpointing.save_export(tmp_path / "e", _params(), {})
    with pytest.raises(checkpointing.CheckpointError, match="already exists"):
        checkpointing.save_export(tmp_path / "e", _params(1), {})
    with pytest.raises(checkpointing.CheckpointError, match="missing"):
        checkpointing.save_export(tmp_path / "f", {"objective": {}}, {})
    assert not (tmp_path / "f").exists()


def test_load_export_errors_name_the_path(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match="no such export"):
        checkpointing.load_export(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(checkpointing.CheckpointError, match="no config.json"):
        checkpointing.load_export(tmp_path / "x")
    (tmp_path / "x" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(checkpointing.CheckpointError, match="format"):
        checkpointing.load_export(tmp_path / "x")


def test_train_checkpoints_keep_last_and_best(tmp_path):
    manager = checkpointing.TrainCheckpoints(tmp_path, keep=2, best_metrics={"psnr": "max"})
    for step, psnr in ((1, 20.0), (2, 25.0), (3, 22.0)):
        state = {"w": np.full((2,), step, np.float32)}
        manager.save(step, state, {"step": step})
        manager.save_best(step, state, {"step": step}, {"psnr": psnr})
    manager.wait_until_finished()
    assert manager.latest_step() == 3
    restored, record = manager.restore_latest({"w": np.zeros((2,), np.float32)})
    np.testing.assert_array_equal(restored["w"], [3, 3])
    assert record["step"] == 3
    kept = sorted(int(p.name) for p in (tmp_path / "latest").iterdir() if p.name.isdigit())
    best = sorted(int(p.name) for p in (tmp_path / "best_psnr").iterdir() if p.name.isdigit())
    manager.close()
    assert kept == [2, 3]
    assert best == [2]
