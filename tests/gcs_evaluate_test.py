"""evaluate and its analyses with every location on gs:// (the local GCS emulator, conftest.py).

The same run on local paths is the reference: the numbers and every written file must be the
same, only the locations differ. Images are small crops of two Set5 images, so the tiny model
and the metrics stay cheap on a CPU.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import errors, evaluate, paths
from lfcsr_jax.evaluation import lpips, metrics, sources
from tests.conftest import make_tiny_export

HR_CROP = 64  # HR pixels kept per side (LR: HR_CROP / 4)


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _make_inputs(shared_data: Path, root: Path) -> None:
    """root/data/Set5 (SelfExSR layout, 2 cropped images, one HR stored gray, the index.csv
    subset), root/esrgan/Set5 (another method's SR files) and root/points.json."""
    src = shared_data / "benchmarks" / "Set5"
    dst = root / "data" / "Set5"
    (dst / "HR").mkdir(parents=True)
    (dst / "LR_bicubic" / "X4").mkdir(parents=True)
    (root / "esrgan" / "Set5").mkdir(parents=True)
    lines = (src / "index.csv").read_text().splitlines()
    (dst / "index.csv").write_text("\n".join(lines[:3]) + "\n")
    rng = np.random.default_rng(0)
    for number, name in ((1, "baby"), (2, "bird")):
        hr = Image.open(src / "HR" / f"img_00{number}_SRF_4_HR.png").crop((0, 0, HR_CROP, HR_CROP))
        if number == 2:
            hr = hr.convert("L")  # a 1-channel HR file: scored on gray levels (metrics.py)
        lr = Image.open(src / "LR_bicubic" / "X4" / f"img_00{number}_SRF_4_LR.png")
        lr = lr.crop((0, 0, HR_CROP // 4, HR_CROP // 4))
        (dst / "HR" / f"img_00{number}_SRF_4_HR.png").write_bytes(_png(hr))
        (dst / "LR_bicubic" / "X4" / f"img_00{number}_SRF_4_LR.png").write_bytes(_png(lr))
        noisy = np.clip(np.asarray(hr.convert("RGB"), np.int16)
                        + rng.integers(-8, 9, (HR_CROP, HR_CROP, 3)), 0, 255).astype(np.uint8)
        (root / "esrgan" / "Set5" / f"{name}_x4.png").write_bytes(_png(Image.fromarray(noisy)))
    points = [{"label": "other", "dataset": "Set5", "psnr": 20.0, "ssim": 0.5}]
    (root / "points.json").write_text(json.dumps(points))


def _upload(local: Path, uri: str) -> None:
    for folder, _, names in os.walk(local):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), local)
            paths.location(f"{uri}/{relative}").write_bytes(Path(folder, name).read_bytes())


def _tree(root: paths.Path) -> dict[str, bytes]:
    """relative path -> content of every file under `root` (iterdir: no ** globs on gs://)."""
    files: dict[str, bytes] = {}
    pending = [root]
    while pending:
        for entry in pending.pop().iterdir():
            if entry.is_dir():
                pending.append(entry)
            else:
                files[os.fspath(entry)[len(os.fspath(root)) + 1:]] = entry.read_bytes()
    return files


def _run(root: str, export: str) -> dict:
    return evaluate.main([
        f"--checkpoint={export}", f"--data_dir={root}/data", "--datasets=Set5,Set14",
        "--metrics=psnr,ssim", "--alphas=0,1", f"--output_dir={root}/eval",
        f"--sr_dir=ESRGAN={root}/esrgan", "--interpolate=Y,ESRGAN",
        f"--reference_points={root}/points.json", "--save_images", "--save_diagnostics",
        "--html", "--html_crop=0,0,16"])


def test_evaluate_on_gcs_matches_local_run(shared_data, tmp_path, gcs_root):
    local = tmp_path / "local"
    _make_inputs(shared_data, local)
    _upload(local, gcs_root)
    export_local = make_tiny_export(local / "export")
    make_tiny_export(f"{gcs_root}/export")  # same seed: the same weights

    want = _run(os.fspath(local), os.fspath(export_local))
    got = _run(gcs_root, f"{gcs_root}/export")

    assert got["results"] == want["results"]  # every number, per image and mean
    assert got["missing_datasets"] == want["missing_datasets"] == ["Set14"]
    rows = got["results"]["Set5"]["rows"]
    assert {"bicubic", "alpha=0", "alpha=1", "ESRGAN", "mix(Y,ESRGAN) a=0"} <= set(rows)
    assert got["results"]["Set5"]["count"] == 2

    local_files = _tree(paths.location(local / "eval"))
    remote_files = _tree(paths.location(f"{gcs_root}/eval"))
    assert set(remote_files) == set(local_files)
    for name in ("results.csv", "results.json", "table.md", "lf_mae.json", "pd_plane_Set5.png",
                 "report.html", "report_files/index.json", "images/Set5/alpha1/baby.png",
                 "diagnostics/Set5/bird_ll_diff.png", "report_files/Set5/baby/crop_Yp.png"):
        assert name in remote_files, name
    checkpoint_local, checkpoint_remote = os.fspath(export_local), f"{gcs_root}/export"
    for name, content in local_files.items():
        if name == "results.json":  # only the location, run time and compile counts differ
            a, b = json.loads(content), json.loads(remote_files[name])
            assert b["info"]["checkpoint"] == checkpoint_remote
            for key in ("checkpoint", "seconds", "compiles"):
                a["info"].pop(key), b["info"].pop(key)
            assert a == b
        elif name == "report.html":
            assert remote_files[name].decode() == content.decode().replace(
                checkpoint_local, checkpoint_remote), name
        else:
            assert remote_files[name] == content, name
    plane = np.asarray(Image.open(io.BytesIO(remote_files["pd_plane_Set5.png"])))
    assert plane.shape[0] > 200 and plane.std() > 5  # a drawn figure


def test_output_dir_checks_on_gcs(gcs_root):
    paths.location(f"{gcs_root}/taken").write_text("an object, not a folder")
    with pytest.raises(errors.UserError, match="exists and is not a folder"):
        paths.check_output_dir(f"{gcs_root}/taken", "--output_dir")
    with pytest.raises(errors.UserError, match="is a file"):
        paths.check_output_dir(f"{gcs_root}/taken/below", "--output_dir")
    with pytest.raises(errors.UserError, match="bucket gs://no-such-bucket-h1"):
        paths.check_output_dir("gs://no-such-bucket-h1/out", "--output_dir")
    fresh = paths.check_output_dir(f"{gcs_root}/new/eval/", "--output_dir")
    assert os.fspath(fresh) == f"{gcs_root}/new/eval" and not fresh.exists()  # nothing created
    with pytest.raises(SystemExit, match="exists and is not a folder"):  # before any scoring
        evaluate.main(["--model=bicubic", f"--data_dir={gcs_root}", f"--output_dir={gcs_root}/taken"])
    assert paths.same_location(f"{gcs_root}/a/", f"{gcs_root}/a")
    assert not paths.same_location(f"{gcs_root}/a", f"{gcs_root}/b")


def test_sr_dir_missing_on_gcs_is_named(gcs_root):
    with pytest.raises(sources.SourceError, match=f"{gcs_root}/nothing"):
        sources.parse_sr_dirs([f"ESRGAN={gcs_root}/nothing"])


def test_weights_read_from_gcs(shared_data, gcs_root):
    """--niqe_params (.npz and .mat) and --lpips_dir on gs:// read the same values as locally."""
    niqe = shared_data / "weights" / "niqe"
    for name in ("niqe_pris_params.npz", "modelparameters.mat"):
        paths.location(f"{gcs_root}/niqe/{name}").write_bytes((niqe / name).read_bytes())
        for got, want in zip(metrics.load_niqe_params(f"{gcs_root}/niqe/{name}"),
                             metrics.load_niqe_params(niqe / name)):
            np.testing.assert_array_equal(got, want)
    heads = shared_data / "weights" / "lpips" / "v0.1" / "alex.npz"
    paths.location(f"{gcs_root}/lpips/v0.1/alex.npz").write_bytes(heads.read_bytes())
    with pytest.raises(metrics.MetricUnavailable, match="AlexNet"):  # heads only, as locally
        lpips.find_lpips_files(f"{gcs_root}/lpips")
    remote = lpips.heads_from_state_dict(
        lpips._load_state_dict(paths.location(f"{gcs_root}/lpips/v0.1/alex.npz")))
    for got, want in zip(remote, lpips.heads_from_state_dict(lpips._load_state_dict(heads))):
        np.testing.assert_array_equal(got, want)
