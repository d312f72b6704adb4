"""sweep: a two-value lambda_r sweep of the tiny regularizer model, end to end, then a resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import sweep

# Compile time dominates these one-step trainings and evaluations: XLA's optimisations off took
# the end-to-end test from 56 s to 39 s on the 2-core machine (what it checks is the sweep's
# bookkeeping, which does not depend on how XLA optimises).
pytestmark = pytest.mark.usefixtures("fast_compiles")

# One ADMM-phase step per setting: the test is about the sweep machinery, not the training.
CHEAP = ["--set=train.phases=admm", "--set=schedule.steps_per_epoch=1",
         "--set=schedule.admm_epochs=1", "--set=input.val_count=1"]


def test_set_field_converts_to_the_field_type():
    config = sweep.load_config("configs/ablation_regularizer.py:tiny")
    assert config.admm.method == "regularizer" and config.model.han_features == 8
    assert sweep.set_field(config, "admm.lambda_r", "1e-3") == pytest.approx(1e-3)
    assert sweep.set_field(config, "train.phases", "admm") == ("admm",)
    assert sweep.set_field(config, "admm.lowpass", "gaussian") == "gaussian"
    with pytest.raises(sweep.SweepError, match="unknown config field"):
        sweep.set_field(config, "admm.nope", "1")
    with pytest.raises(sweep.SweepError, match="not a float"):
        sweep.set_field(config, "admm.rho", "big")


def test_two_value_sweep_end_to_end_and_resume(shared_data, tmp_path):
    argv = ["--config=configs/ablation_regularizer.py:tiny", "--values=admm.lambda_r=0,1e-3",
            f"--workdir={tmp_path}", f"--data_dir={shared_data / 'benchmarks'}",
            "--datasets=Set5", "--max_images=1", "--metrics=psnr,niqe", *CHEAP]
    out = sweep.main(argv)
    assert [s["value"] for s in out["settings"]] == [0.0, 1e-3]
    for name in ("admm.lambda_r=0", "admm.lambda_r=1e-3"):
        assert (tmp_path / name / "export" / "config.json").is_file()
        assert (tmp_path / name / "eval" / "results.json").is_file()
    table = (tmp_path / "sweep_table.md").read_text()
    assert "| 0.001 | Set5 |" in table and "LF-MAE" in table
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert all(s["results"]["Set5"]["lf_mae"] > 0 for s in saved)
    for fig in ("pd_plane_Set5.png", "lf_mae_Set5.png"):
        assert np.asarray(Image.open(tmp_path / fig)).std() > 5, fig
    # A rerun trains and evaluates nothing again.
    stamp = (tmp_path / "admm.lambda_r=0" / "export" / "config.json").stat().st_mtime_ns
    again = sweep.main(argv)
    assert (tmp_path / "admm.lambda_r=0" / "export" / "config.json").stat().st_mtime_ns == stamp
    assert again["settings"][1]["results"] == out["settings"][1]["results"]
