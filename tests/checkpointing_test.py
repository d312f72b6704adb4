"""The generator export format and the training checkpoint manager."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lfcsr_jax.training import checkpointing
from lfcsr_jax.weights import exports


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"objective": {"conv": {"kernel": rng.standard_normal((3, 3, 3, 4)).astype(np.float32)}},
            "perceptual": {"gamma": np.float32(0.25) * np.ones((), np.float32)}}


def test_export_round_trip(tmp_path):
    target = exports.save_export(tmp_path / "export", _params(), {"scale": 4, "rgb_mean": (1, 2, 3)},
                                       extra_info={"step": 7})
    model_cfg, params = exports.load_export(target)
    assert model_cfg == {"scale": 4, "rgb_mean": [1, 2, 3]}
    np.testing.assert_array_equal(params["objective"]["conv"]["kernel"],
                                  _params()["objective"]["conv"]["kernel"])
    assert json.loads((target / "config.json").read_text())["step"] == 7
    # No staging folder is left beside the export.
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_export_refuses_overwrite_and_bad_trees(tmp_path):
    exports.save_export(tmp_path / "e", _params(), {})
    with pytest.raises(checkpointing.CheckpointError, match="already exists"):
        exports.save_export(tmp_path / "e", _params(1), {})
    with pytest.raises(checkpointing.CheckpointError, match="missing"):
        exports.save_export(tmp_path / "f", {"objective": {}}, {})
    assert not (tmp_path / "f").exists()


def test_load_export_errors_name_the_path(tmp_path):
    with pytest.raises(checkpointing.CheckpointError, match="no such export"):
        exports.load_export(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(checkpointing.CheckpointError, match="no config.json"):
        exports.load_export(tmp_path / "x")
    (tmp_path / "x" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(checkpointing.CheckpointError, match="format"):
        exports.load_export(tmp_path / "x")


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


def _flip_bytes(path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _damage_flipped_data(step_dir) -> None:
    for path in _data_files(step_dir):
        _flip_bytes(path)


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


def test_checksums_depend_on_values_dtype_and_shape():
    x = np.arange(6, dtype=np.float32)
    digest = exports.array_checksum(x)
    assert exports.array_checksum(x.copy()) == digest
    assert exports.array_checksum(x.reshape(2, 3)) != digest
    assert exports.array_checksum(x.view(np.int32)) != digest
    y = x.copy()
    y[3] = np.nextafter(y[3], np.float32(10))  # one ulp
    assert exports.array_checksum(y) != digest
    import ml_dtypes  # most float8 types share numpy's dtype.str '<V1': the name tells them apart

    raw = np.arange(4, dtype=np.uint8)
    assert (exports.array_checksum(raw.view(ml_dtypes.float8_e4m3fn))
            != exports.array_checksum(raw.view(ml_dtypes.float8_e4m3fnuz)))
    half = np.ones((4,), np.float16)
    entry = exports.tree_checksums({"w": half.view(ml_dtypes.bfloat16)})["leaves"]["['w']"]
    assert entry["dtype"] == "bfloat16" and entry["shape"] == [4]


def test_damaged_export_names_the_file(tmp_path):
    target = exports.save_export(tmp_path / "export", _params(), {})
    info = json.loads((target / "config.json").read_text())
    key = next(iter(info["checksums"]["leaves"]))
    info["checksums"]["leaves"][key]["sha256"] = "0" * 64  # what a changed array would give
    (target / "config.json").write_text(json.dumps(info))
    with pytest.raises(checkpointing.CheckpointError,
                       match=r"export/params: checksum mismatch in .*config.json"):
        exports.load_export(target)


def test_export_with_flipped_data_bytes_is_refused(tmp_path):
    target = exports.save_export(tmp_path / "export", _params(), {})
    for path in sorted(pathlib.Path(target / "params").rglob("*")):
        if path.is_file() and path.parent.name == "d":
            _flip_bytes(path)
    with pytest.raises(checkpointing.CheckpointError, match="export/params"):
        exports.load_export(target)


def test_export_without_checksums_loads_with_a_log_line(tmp_path, caplog):
    target = exports.save_export(tmp_path / "export", _params(), {})
    info = json.loads((target / "config.json").read_text())
    del info["checksums"]  # an export from before checksums
    (target / "config.json").write_text(json.dumps(info))
    with caplog.at_level("WARNING"):
        _, params = exports.load_export(target)
    np.testing.assert_array_equal(params["objective"]["conv"]["kernel"],
                                  _params()["objective"]["conv"]["kernel"])
    assert any("unverified" in r.getMessage() for r in caplog.records)


def test_export_config_format_is_unchanged_and_names_no_module(tmp_path):
    """Exports written before the package was split into subpackages must still load: the
    on-disk record holds the format string and the model config, and no module path."""
    target = exports.save_export(tmp_path / "e", _params(), {"scale": 4})
    text = (target / "config.json").read_text()
    info = json.loads(text)
    assert info["format"] == "lfcsr_jax.export/1"
    assert set(info) == {"format", "model", "checksums"}
    assert "lfcsr_jax" not in text.replace("lfcsr_jax.export/1", "")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "params"]
