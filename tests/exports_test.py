"""The generator export format (weights/exports.py): round trip, refusals, checksums, the on-disk
record."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from lfcsr_jax.weights import exports
from tests.conftest import flip_bytes


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
    with pytest.raises(exports.CheckpointError, match="already exists"):
        exports.save_export(tmp_path / "e", _params(1), {})
    with pytest.raises(exports.CheckpointError, match="missing"):
        exports.save_export(tmp_path / "f", {"objective": {}}, {})
    assert not (tmp_path / "f").exists()


def test_load_export_errors_name_the_path(tmp_path):
    with pytest.raises(exports.CheckpointError, match="no such export"):
        exports.load_export(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(exports.CheckpointError, match="no config.json"):
        exports.load_export(tmp_path / "x")
    (tmp_path / "x" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(exports.CheckpointError, match="format"):
        exports.load_export(tmp_path / "x")


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
    with pytest.raises(exports.CheckpointError,
                       match=r"export/params: checksum mismatch in .*config.json"):
        exports.load_export(target)


def test_export_with_flipped_data_bytes_is_refused(tmp_path):
    target = exports.save_export(tmp_path / "export", _params(), {})
    for path in sorted(pathlib.Path(target / "params").rglob("*")):
        if path.is_file() and path.parent.name == "d":
            flip_bytes(path)
    with pytest.raises(exports.CheckpointError, match="export/params"):
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
