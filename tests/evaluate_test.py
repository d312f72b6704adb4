"""evaluate: the bicubic x4 table of the SR literature, and a tiny model's report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import evaluate
from lfcsr_jax.evaluation import metrics
from lfcsr_jax.inference.model import load_model
from tests.conftest import make_tiny_export

# (PSNR, SSIM) of bicubic x4 printed by every SR paper (docs/design.md section 8).
PUBLISHED_BICUBIC = {"Set5": (28.42, 0.8104), "Set14": (26.00, 0.7027), "BSD100": (25.96, 0.6675)}


def test_bicubic_reproduces_published_table(shared_data, tmp_path):
    out = evaluate.main(["--model=bicubic", f"--data_dir={shared_data / 'benchmarks'}",
                         "--datasets=Set5,Set14,BSD100,Urban100", "--metrics=psnr,ssim",
                         f"--output_dir={tmp_path}"])
    assert out["missing_datasets"] == ["Urban100"]  # not in the offline data: skipped, reported
    for dataset, (psnr, ssim) in PUBLISHED_BICUBIC.items():
        row = out["results"][dataset]["rows"]["bicubic"]
        assert abs(row["psnr"] - psnr) <= 0.02, (dataset, row)
        assert abs(row["ssim"] - ssim) <= 0.002, (dataset, row)
    assert out["results"]["BSD100"]["count"] == 100
    assert (tmp_path / "pd_plane_Set5.png").is_file()  # PSNR vs SSIM when nothing perceptual


def test_model_report_files_and_plot(shared_data, tmp_path):
    export = make_tiny_export(tmp_path / "export")
    out_dir = tmp_path / "report"
    out = evaluate.main([
        f"--checkpoint={export}", f"--data_dir={shared_data / 'benchmarks'}", "--datasets=Set5",
        "--max_images=2", "--alphas=0,0.5,1", "--metrics=psnr,ssim,lpips,niqe",
        f"--lpips_dir={shared_data / 'weights/lpips'}",  # heads only: LPIPS must be unavailable
        f"--niqe_params={shared_data / 'weights/niqe/niqe_pris_params.npz'}",
        f"--output_dir={out_dir}", "--reference_points=paper", "--save_images",
        "--save_diagnostics"])
    assert "AlexNet" in out["unavailable"]["lpips"]
    rows = out["results"]["Set5"]["rows"]
    assert set(rows) == {"bicubic", "alpha=0", "alpha=0.5", "alpha=1"}
    assert set(rows["alpha=1"]) == {"psnr", "ssim", "niqe"}
    for name in ("table.md", "results.csv", "results.json", "pd_plane_Set5.png"):
        assert (out_dir / name).is_file(), name
    plot = np.asarray(Image.open(out_dir / "pd_plane_Set5.png"))
    assert plot.shape[0] > 200 and plot.std() > 5  # a rendered figure, not a blank canvas
    assert "lpips: unavailable" in (out_dir / "table.md").read_text()
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["unavailable"]["lpips"] and saved["info"]["alphas"] == [0.0, 0.5, 1.0]
    assert len(list((out_dir / "images/Set5/alpha1").glob("*.png"))) == 2
    assert len(list((out_dir / "diagnostics/Set5").glob("*_ll_diff.png"))) == 2
    # The alpha = 1 row scores G_O's output and alpha = 0 G_P's, from the same forward pass.
    first = out["results"]["Set5"]["per_image"][0]
    item = evaluate.load_dataset(shared_data / "benchmarks", "Set5", 4)[0]
    y_o, y_p = load_model(export).predict(item["lr"])
    assert first["alpha=1"]["psnr"] == pytest.approx(metrics.psnr_y(metrics.quantize(y_o), item["hr"]))
    assert first["alpha=0"]["psnr"] == pytest.approx(metrics.psnr_y(metrics.quantize(y_p), item["hr"]))


def test_bad_arguments(tmp_path):
    with pytest.raises(SystemExit, match="--checkpoint"):
        evaluate.main([f"--data_dir={tmp_path}"])
    with pytest.raises(SystemExit, match="none of the datasets"):
        evaluate.main(["--model=bicubic", f"--data_dir={tmp_path}", "--datasets=Set5"])
    with pytest.raises(ValueError, match="alphas"):
        evaluate.parse_alphas("0,2")
    with pytest.raises(ValueError, match="unknown"):
        evaluate.MetricSuite(["psnr", "fid"], 4)
    with pytest.raises(ValueError, match=r"nrqm cannot be computed here: it needs .*model\.mat"):
        evaluate.parse_metrics("psnr, nrqm")
    assert evaluate.parse_metrics(" psnr,ssim ,") == ["psnr", "ssim"]


def test_reference_points_file(tmp_path):
    good = tmp_path / "points.json"
    good.write_text(json.dumps([{"label": "ESRGAN", "dataset": "Set5", "psnr": 28.8, "lpips": 0.07}]))
    assert evaluate.load_reference_points(str(good))[0]["label"] == "ESRGAN"
    assert len(evaluate.load_reference_points("paper")) == 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Set5": 1}))
    with pytest.raises(ValueError, match="label, dataset, psnr"):
        evaluate.load_reference_points(str(bad))
