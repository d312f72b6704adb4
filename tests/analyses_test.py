"""evaluate's analyses: --sr_dir sources, --interpolate curves, LF-MAE, the HTML report (in a
real headless Chromium), and NIQE out of the box. Real Set5 images and a tiny random export."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from lfcsr_jax import evaluate
from lfcsr_jax.evaluation import metrics, pd_plane, sources
from lfcsr_jax.inference.model import load_model
from lfcsr_jax.input import image_io
from lfcsr_jax.input.imresize import imresize
from tests.conftest import make_tiny_export

# Bicubic outputs saved under other methods' naming styles: (folder layout, file name pattern).
STYLES = {
    "ESRGAN": ("per_set", "{name}_SR.png"),  # FOLDER/Set5/baby_SR.png
    "EDSR": ("flat", "{name}x4.png"),  # FOLDER/babyx4.png
    "SelfExSR": ("flat", "{img}_SRF_4_SelfExSR.png"),  # FOLDER/img_001_SRF_4_SelfExSR.png
}


def test_stem_keys_strip_method_suffixes():
    for stem in ("baby", "baby_x4", "babyx4", "baby_SR", "baby_rlt", "Baby_x4_SR", "baby_out"):
        assert sources.stem_key(stem) == "baby", stem
    assert sources.stem_key("img_001_SRF_4_SelfExSR") == "img_001"
    assert sources.stem_key("img_001_SRF_4_HR") == "img_001"
    assert sources.stem_key("101085") == "101085"
    with pytest.raises(sources.SourceError, match="NAME=FOLDER"):
        sources.parse_sr_dirs(["nofolder"])
    with pytest.raises(ValueError, match="unknown source"):
        pd_plane.Interpolation("Y,ESRGAN", [0.5], [], True)


def test_niqe_works_without_params(shared_data):
    suite = evaluate.MetricSuite(["psnr", "niqe"], 4)
    assert suite.unavailable == {} and "niqe" in suite.names
    shipped = metrics.load_niqe_params(metrics.DEFAULT_NIQE_PARAMS)
    live = metrics.load_niqe_params(shared_data / "weights/niqe/modelparameters.mat")
    for a, b in zip(shipped, live):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def _write_sources(root, data_dir, items):
    index = {row.split(",")[2]: row.split(",")[0] for row in
             (data_dir / "Set5/index.csv").read_text().splitlines()[1:]}
    for method, (layout, pattern) in STYLES.items():
        folder = root / method / ("Set5" if layout == "per_set" else "")
        for item in items:
            img = index[item["name"]].split("/")[-1].split("_SRF")[0]
            image_io.write_png(folder / pattern.format(name=item["name"], img=img),
                               imresize(item["lr"], 4))
    return {m: root / m for m in STYLES}


@pytest.fixture(scope="module")
def evaluated(shared_data, tmp_path_factory):
    """One evaluate run: tiny export, 2 Set5 images, three --sr_dir styles, a curve, --html."""
    tmp = tmp_path_factory.mktemp("analyses")
    export = make_tiny_export(tmp / "export")
    data = shared_data / "benchmarks"
    items = evaluate.load_dataset(data, "Set5", 4)[:2]
    folders = _write_sources(tmp / "methods", data, items)
    out_dir = tmp / "eval"
    out = evaluate.main([
        f"--checkpoint={export}", f"--data_dir={data}", "--datasets=Set5", "--max_images=2",
        "--alphas=0,0.5,1", "--metrics=psnr,ssim,niqe", "--interpolate=ESRGAN,Y",
        *[f"--sr_dir={m}={f}" for m, f in folders.items()], "--html", f"--output_dir={out_dir}"])
    return {"out": out, "dir": out_dir, "export": export, "items": items, "folders": folders,
            "data": data}


def test_sources_rows_curve_and_lf_mae(evaluated):
    rows = evaluated["out"]["results"]["Set5"]["rows"]
    for method in STYLES:  # bicubic saved under each naming style scores exactly as bicubic
        assert rows[method] == pytest.approx(rows["bicubic"]), method
    assert rows["mix(ESRGAN,Y) a=1"] == pytest.approx(rows["bicubic"])
    assert rows["mix(ESRGAN,Y) a=0"] == pytest.approx(rows["alpha=0"])
    table = (evaluated["dir"] / "table.md").read_text()
    assert "| Set5 | SelfExSR | 2 |" in table and "LF-MAE" in table
    # LF-MAE = mean over images of mean |T(Y) - T(Y')| with the one-level Haar LL.
    model = load_model(evaluated["export"])
    expected = []
    for item in evaluated["items"]:
        y_o, y_p = model.predict(item["lr"])
        ll = [img.reshape(img.shape[0] // 2, 2, img.shape[1] // 2, 2, 3).sum((1, 3)) / 2
              for img in (y_o.astype(np.float64), y_p.astype(np.float64))]
        expected.append(np.abs(ll[0] - ll[1]).mean())
    result = evaluated["out"]["results"]["Set5"]
    assert result["lf_mae"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert json.loads((evaluated["dir"] / "lf_mae.json").read_text())["Set5"]["transform"] == "haar-low"
    plot = np.asarray(Image.open(evaluated["dir"] / "pd_plane_Set5.png"))
    assert plot.shape[0] > 300 and plot.std() > 5


def test_sr_dir_fails_naming_the_image(evaluated, tmp_path):
    esrgan = evaluated["folders"]["ESRGAN"] / "Set5"
    broken = tmp_path / "broken" / "Set5"
    shutil.copytree(esrgan, broken)
    base = ["--model=bicubic", f"--data_dir={evaluated['data']}", "--datasets=Set5",
            "--max_images=2", "--metrics=psnr", f"--sr_dir=X={broken.parent}"]
    (broken / "bird_SR.png").unlink()
    with pytest.raises(sources.SourceError, match="no SR image for bird"):
        evaluate.main(base)
    image_io.write_png(broken / "bird_SR.png", np.zeros((10, 12, 3), np.uint8))
    with pytest.raises(sources.SourceError, match="bird_SR.png: size 12x10"):
        evaluate.main(base)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium (Debian: apt-get install chromium; .ci/run installs it)")


def test_html_report_in_headless_chromium(evaluated):
    browser = _chromium()
    out_dir = evaluated["dir"]
    page = out_dir / "report.html"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # works offline
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0"]
    run = subprocess.run([*flags, "--dump-dom", page.as_uri() + "#selftest=0.3"],
                         capture_output=True, text=True, timeout=120)
    dom = run.stdout
    start = dom.index('<pre id="selftest">') + len('<pre id="selftest">')
    report = json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"'))
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == [] and report["errors"] == [] and report["broken"] == []
    # bicubic, Y', Y, 3 sources and HR, full and crop, for 2 images, plus the PD plane.
    assert report["images"] == 2 * 2 * 7 + 1
    # The slider at 0.3 shows 0.3 Y' + 0.7 Y of the stage PNGs (8-bit compositing: +-2).
    y = np.asarray(Image.open(out_dir / report["y"]), np.float64)
    yp = np.asarray(Image.open(out_dir / report["yp"]), np.float64)
    blend = 0.3 * yp + 0.7 * y
    samples = np.array(report["samples"])
    assert len(samples) == 64
    shown = samples[:, 2:].astype(np.float64)
    expected = blend[samples[:, 1], samples[:, 0]]
    assert np.abs(shown - expected).max() <= 2
    assert np.abs(shown - y[samples[:, 1], samples[:, 0]]).max() > 5  # not just Y
    shot = out_dir / "report_screenshot.png"
    subprocess.run([*flags, "--window-size=1400,2200", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert np.asarray(Image.open(shot)).std() > 5
