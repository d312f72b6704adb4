"""The training checkpoint manager (training/checkpointing.py): last and best saves, damaged
saves set aside, checksums verified on restore."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lfcsr_jax.training import checkpointing
from tests.conftest import flip_bytes


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
    # Every save, the best ones too, carries the checksums of its state.
    for folder in ("latest/3", "best_psnr/2"):
        assert (tmp_path / folder / "checksums").is_dir(), folder


# ----------------------------------------------------------------------------- integrity


def _state(step: int) -> dict:
    return {"w": np.full((16, 8), step, np.float32), "b": np.arange(5, dtype=np.int32) + step}


def _abstract() -> dict:
    return {"w": np.zeros((16, 8), np.float32), "b": np.zeros((5,), np.int32)}


def _saved(tmp_path, steps=(1, 2, 3)) -> checkpointing.TrainCheckpoints:
    manager = checkpointing.TrainCheckpoints(tmp_path, keep=5)
    for step in steps:
        manager.save(step, _state(step), {"step": step})
    manager.wait_until_finished()
    return manager


def _data_files(step_dir):
    return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()
                   and p.parent.name == "d"), key=lambda p: p.stat().st_size)


def _damage_flipped_data(step_dir) -> None:
    for path in _data_files(step_dir):
        flip_bytes(path)


def _damage_silently(step_dir) -> None:
    """Values that decode cleanly but differ: another save's arrays under this step's record."""
    import shutil

    shutil.rmtree(step_dir / "state")
    shutil.copytree(step_dir.parent / "1" / "state", step_dir / "state")


def _damage_truncated_checksums(step_dir) -> None:
    path = step_dir / "checksums" / "metadata"
    path.write_bytes(path.read_bytes()[:40])


def _damage_truncated_state_metadata(step_dir) -> None:
    path = step_dir / "state" / "_METADATA"
    path.write_bytes(path.read_bytes()[:30])


def _damage_missing_data_file(step_dir) -> None:
    for path in _data_files(step_dir):
        path.unlink()


def _damage_missing_checksums(step_dir) -> None:
    import shutil

    shutil.rmtree(step_dir / "checksums")


def _damage_emptied(step_dir) -> None:
    import shutil

    for child in list(step_dir.iterdir()):
        shutil.rmtree(child) if child.is_dir() else child.unlink()


@pytest.mark.parametrize("damage, reason", [
    (_damage_flipped_data, "unreadable"), (_damage_silently, "checksum"),
    (_damage_truncated_checksums, "checksums"), (_damage_truncated_state_metadata, "unreadable"),
    (_damage_missing_data_file, "unreadable"), (_damage_missing_checksums, "checksums"),
    (_damage_emptied, "empty")])
def test_damaged_newest_checkpoint_falls_back_and_is_set_aside(tmp_path, damage, reason, caplog):
    _saved(tmp_path).close()
    damage(tmp_path / "latest" / "3")
    manager = checkpointing.TrainCheckpoints(tmp_path, keep=5)
    with caplog.at_level("WARNING"):
        state, record = manager.restore_latest(_abstract())
    assert record["step"] == 2
    np.testing.assert_array_equal(state["w"], _state(2)["w"])
    np.testing.assert_array_equal(state["b"], _state(2)["b"])
    # Set aside (not deleted), where no manager looks, and no longer the latest step.
    assert not (tmp_path / "latest" / "3").exists()
    assert (tmp_path / "damaged" / f"latest-3-{reason}").is_dir()
    assert manager.latest_step() == 2
    lines = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "step 3" in lines[0], lines
    # The run goes on: the next save of step 3 and a later restore work as usual.
    manager.save(3, _state(30), {"step": 3}, force=True)
    manager.wait_until_finished()
    assert manager.restore_latest(_abstract())[1]["step"] == 3
    manager.close()


def test_all_checkpoints_damaged_is_one_error_and_moves_nothing(tmp_path):
    _saved(tmp_path, steps=(1, 2)).close()
    _damage_flipped_data(tmp_path / "latest" / "1")
    _damage_truncated_checksums(tmp_path / "latest" / "2")
    manager = checkpointing.TrainCheckpoints(tmp_path, keep=5)
    with pytest.raises(checkpointing.CheckpointError, match="no checkpoint verifies") as error:
        manager.restore_latest(_abstract())
    message = str(error.value)
    assert "step 2" in message and "step 1" in message and "\n" not in message
    assert sorted(p.name for p in (tmp_path / "latest").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert not (tmp_path / "damaged").exists()
    manager.close()


def test_checkpoint_of_another_shape_is_refused_not_set_aside(tmp_path):
    _saved(tmp_path, steps=(1,)).close()
    manager = checkpointing.TrainCheckpoints(tmp_path, keep=5)
    other = {"w": np.zeros((4, 8), np.float32), "b": np.zeros((5,), np.int32)}
    with pytest.raises(checkpointing.CheckpointError, match="another shape.*'w'"):
        manager.restore_latest(other)
    assert (tmp_path / "latest" / "1").is_dir()
    manager.close()


def test_checkpoint_without_checksums_restores_with_a_log_line(tmp_path, caplog):
    import orbax.checkpoint as ocp

    # As written before checksums existed: state and record only.
    old = ocp.CheckpointManager(tmp_path / "latest")
    old.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(1)),
                                        record=ocp.args.JsonSave({"step": 1})))
    old.wait_until_finished()
    old.close()
    manager = checkpointing.TrainCheckpoints(tmp_path, keep=5)
    with caplog.at_level("WARNING"):
        state, record = manager.restore_latest(_abstract())
    assert record["step"] == 1
    np.testing.assert_array_equal(state["w"], _state(1)["w"])
    assert any("unverified" in r.getMessage() for r in caplog.records)
    manager.close()
