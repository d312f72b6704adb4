"""`evaluate --html`: a self-contained, offline report.html with its images as files beside it.

Layout of --output_dir: report.html, pd_plane_<dataset>.png, and report_files/<dataset>/<image>/
<source>.png (full size) + crop_<source>.png (the zoomed crop). The page holds the tables, the PD
planes, and per image bicubic, Y', Y, every --sr_dir source and HR at full size and on a crop,
chosen where |Y - Y'| (luma, summed over the crop) is largest, or given with --html_crop=X,Y,SIZE.
An alpha slider blends the two stages in the browser with the formula of `--alpha`:
alpha * Y' + (1 - alpha) * Y (canvas compositing: Y drawn opaque, then Y' with globalAlpha = alpha),
so alpha = 1 is Y' and alpha = 0 is Y. No script, style or font is fetched from the network.

Self-test: opening report.html#selftest=0.3 sets the slider to 0.3 and writes a JSON line into
<pre id="selftest"> (blended pixels, broken images, script errors); tests/report_test.py reads it.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np

from lfcsr_jax import paths
from lfcsr_jax.evaluation.metrics import format_metric
from lfcsr_jax.input import image_io
from lfcsr_jax.paths import Path

FILES = "report_files"


def slug(label: str) -> str:
    """A file-name-safe version of a source label (Y' -> Yp)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.replace("'", "p")).strip("_") or "x"


def choose_crop(shown: Mapping[str, np.ndarray], size: int = 96) -> tuple[int, int, int]:
    """(x, y, size) of the window where the luma |Y - Y'| is largest (else |source - bicubic|)."""
    first = next(iter(shown.values()))
    h, w = first.shape[:2]
    size = max(4, min(size, h, w))
    if "Y" in shown and "Y'" in shown:
        a, b = shown["Y"], shown["Y'"]
    else:
        others = [k for k in shown if k != "bicubic"]
        if not others:
            return (w - size) // 2, (h - size) // 2, size
        a, b = shown[others[0]], shown["bicubic"]
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=2)
    integral = np.pad(diff.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size]
            + integral[:-size, :-size])
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(x), int(y), size


def save_image_set(report_dir: Path, dataset: str, name: str, shown: Mapping[str, np.ndarray],
                   hr: np.ndarray, crop: tuple[int, int, int] | None) -> dict[str, Any]:
    """Writes full-size and crop PNGs of every shown output and HR; returns the page entry."""
    h, w = hr.shape[:2]
    if crop is None:
        crop = choose_crop(shown)
    x, y, size = crop
    size = min(size, h, w)
    x, y = min(max(0, x), w - size), min(max(0, y), h - size)
    folder = PurePosixPath(FILES) / slug(dataset) / slug(name)  # relative: the page's links
    images = []
    for label, img in {**shown, "HR": hr}.items():
        full, cropped = folder / f"{slug(label)}.png", folder / f"crop_{slug(label)}.png"
        image_io.write_png(Path(report_dir) / full.as_posix(), img)
        image_io.write_png(Path(report_dir) / cropped.as_posix(), img[y:y + size, x:x + size])
        images.append({"label": label, "full": full.as_posix(), "crop": cropped.as_posix()})
    return {"dataset": dataset, "name": name, "width": w, "height": h, "crop": [x, y, size],
            "images": images}


def _describe(label: str) -> str:
    return {"alpha=1": "Y' (alpha=1)", "alpha=0": "Y (alpha=0)"}.get(label, label)


def _results_table(dataset: str, result: Mapping[str, Any], metric_names: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(m.upper())}</th>" for m in metric_names)
    body = []
    for label, row in result["rows"].items():
        cells = "".join(f"<td>{format_metric(m, row.get(m))}</td>" for m in metric_names)
        body.append(f"<tr><td>{html.escape(_describe(label))}</td>{cells}</tr>")
    lf = ""
    if "lf_mae" in result:
        lf = (f"<p>LF consistency, mean |T(Y) - T(Y')| with T = {html.escape(result['lf_transform'])}"
              f": <b>{result['lf_mae']:.4f}</b> (0-255 scale)</p>")
    return (f"<h3>{html.escape(dataset)} ({result['count']} images)</h3>"
            f"<table><tr><th>output</th>{head}</tr>{''.join(body)}</table>{lf}")


def _image_section(entry: Mapping[str, Any], metric_names: Sequence[str], index: int) -> str:
    by_label = {img["label"]: img for img in entry["images"]}
    x, y, size = entry["crop"]
    zoom = max(1, min(4, 288 // max(1, size)))
    scores = entry.get("scores", {})

    def caption(label: str) -> str:
        key = {"Y'": "alpha=1", "Y": "alpha=0"}.get(label, label)
        vals = scores.get(key) or scores.get(label) or {}
        text = ", ".join(f"{m.upper()} {format_metric(m, vals[m])}" for m in metric_names if m in vals)
        return html.escape(label) + (f"<br><small>{text}</small>" if text else "")

    crops, fulls = [], []
    for label, img in by_label.items():
        crops.append(
            f'<figure><img class="crop" src="{html.escape(img["crop"])}" width="{size * zoom}" '
            f'height="{size * zoom}" alt="{html.escape(label)} crop"><figcaption>{caption(label)}'
            "</figcaption></figure>")
        fulls.append(
            f'<figure><img class="full" src="{html.escape(img["full"])}" '
            f'data-label="{html.escape(label)}" alt="{html.escape(label)}"><figcaption>'
            f"{caption(label)}</figcaption></figure>")
    blend = ""
    if "Y" in by_label and "Y'" in by_label:
        yp, yy = by_label["Y'"], by_label["Y"]
        blend = (
            f'<figure><canvas class="blend" id="blend{index}" width="{size * zoom}" '
            f'height="{size * zoom}" data-y="{html.escape(yy["crop"])}" '
            f'data-yp="{html.escape(yp["crop"])}" data-zoom="{zoom}"></canvas>'
            '<figcaption>blend <span class="alphaval"></span> (crop)</figcaption></figure>')
        fulls.insert(0, (
            f'<figure><canvas class="blend" id="blendfull{index}" width="{entry["width"]}" '
            f'height="{entry["height"]}" data-y="{html.escape(yy["full"])}" '
            f'data-yp="{html.escape(yp["full"])}" data-zoom="1"></canvas>'
            '<figcaption>blend <span class="alphaval"></span></figcaption></figure>'))
    return (f'<section class="image"><h3>{html.escape(entry["dataset"])} / '
            f'{html.escape(entry["name"])}</h3><p>crop x={x}, y={y}, {size}x{size} HR pixels, '
            f"shown x{zoom}</p>"
            f'<div class="row">{blend}{"".join(crops)}</div>'
            f'<details open><summary>full size</summary><div class="row">{"".join(fulls)}</div>'
            "</details></section>")


_STYLE = """
body{font-family:sans-serif;margin:1em 2em;background:#fafafa;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #bbb;padding:2px 8px;text-align:right}
td:first-child{text-align:left}.row{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}
figure{margin:0;text-align:center;font-size:13px}img.crop,canvas{image-rendering:pixelated}
img.full{max-width:none}#controls{position:sticky;top:0;background:#fff;padding:6px;
border-bottom:1px solid #ccc;z-index:2}.planes img{max-width:640px;margin-right:8px}
"""

_SCRIPT = r"""
(function(){
  var errors = [];
  window.addEventListener('error', function(e){
    var t = e.target;
    errors.push(t && t !== window && t.src ? 'failed to load ' + t.src : String(e.message));
  }, true);
  var slider = document.getElementById('alpha');
  var label = document.getElementById('alphatext');
  var cache = {};
  function image(src){
    if(!cache[src]){
      cache[src] = new Promise(function(ok, bad){
        var im = new Image(); im.onload = function(){ ok(im); };
        im.onerror = function(){ errors.push('failed to load ' + src); bad(src); };
        im.src = src;
      });
    }
    return cache[src];
  }
  var canvases = Array.prototype.slice.call(document.querySelectorAll('canvas.blend'));
  function draw(c, a){
    return Promise.all([image(c.dataset.y), image(c.dataset.yp)]).then(function(ims){
      var ctx = c.getContext('2d');
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = 1; ctx.drawImage(ims[0], 0, 0, c.width, c.height);   // Y
      ctx.globalAlpha = a; ctx.drawImage(ims[1], 0, 0, c.width, c.height);   // alpha * Y'
      ctx.globalAlpha = 1;
    });
  }
  function update(){
    var a = parseFloat(slider.value);
    label.textContent = a.toFixed(2);
    document.querySelectorAll('.alphaval').forEach(function(s){ s.textContent = 'alpha=' + a.toFixed(2); });
    return Promise.all(canvases.map(function(c){ return draw(c, a); }));
  }
  slider.addEventListener('input', update);
  var m = /selftest=([0-9.]+)/.exec(location.hash);
  var imgs = Array.prototype.slice.call(document.images);
  var loaded = Promise.all(imgs.map(function(im){
    return im.complete ? Promise.resolve() : new Promise(function(ok){ im.onload = ok; im.onerror = ok; });
  }));
  update().catch(function(){}).then(function(){ return loaded; }).then(function(){
    if(!m) return;
    slider.value = m[1];
    slider.dispatchEvent(new Event('input'));
    return update().then(function(){
      var out = {alpha: parseFloat(slider.value), images: imgs.length, canvases: canvases.length,
                 broken: imgs.filter(function(im){ return !(im.naturalWidth > 0); }).map(function(im){ return im.src; }),
                 errors: errors, samples: []};
      var c = canvases.filter(function(c){ return c.dataset.zoom === '1'; })[0];
      if(c){
        out.canvas = c.id; out.y = c.dataset.y; out.yp = c.dataset.yp;
        try {
          var d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
          for(var k = 0; k < 64; k++){
            var x = Math.floor((k * 37 + 11) % c.width), y = Math.floor((k * 53 + 7) % c.height);
            var i = 4 * (y * c.width + x);
            out.samples.push([x, y, d[i], d[i + 1], d[i + 2]]);
          }
        } catch(e){ out.read_error = String(e); }
      }
      document.getElementById('selftest').textContent = JSON.stringify(out);
    });
  });
})();
"""


def write_report(output_dir: paths.PathLike, results: Mapping[str, Any], metric_names: Sequence[str],
                 planes: Mapping[str, paths.PathLike], images: Mapping[str, Sequence[Mapping[str, Any]]],
                 info: Mapping[str, Any], unavailable: Mapping[str, str]) -> Path:
    """Writes output_dir/report.html (the images were written by save_image_set)."""
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<title>LFc-SR evaluation report</title>",
             f"<style>{_STYLE}</style></head><body>",
             "<h1>LFc-SR evaluation report</h1>"]
    what = info.get("checkpoint") or info.get("model", "")
    parts.append(f"<p>Model: <code>{html.escape(str(what))}</code>. Metrics as in the paper: "
                 "Y-channel PSNR/SSIM with a 4-pixel border crop, NIQE on Y, LPIPS on RGB.</p>")
    for name, why in unavailable.items():
        parts.append(f"<p><small>{html.escape(name)} unavailable: {html.escape(why)}</small></p>")
    has_blend = any(img["label"] == "Y" for entries in images.values() for e in entries
                    for img in e["images"])
    parts.append('<div id="controls"' + ("" if has_blend else ' hidden') + '>'
                 '<label>alpha (blend = alpha Y\' + (1 - alpha) Y): <input type="range" id="alpha" '
                 'min="0" max="1" step="0.01" value="0.5"> <b id="alphatext"></b></label></div>')
    parts.append("<h2>Tables</h2>")
    parts += [_results_table(d, r, metric_names) for d, r in results.items()]
    if planes:
        parts.append("<h2>Perception-distortion plane</h2><div class='planes'>")
        parts += [f'<img src="{html.escape(Path(p).name)}" alt="PD plane {html.escape(d)}">'
                  for d, p in planes.items()]
        parts.append("</div>")
    parts.append("<h2>Images</h2>")
    index = 0
    for entries in images.values():
        for entry in entries:
            parts.append(_image_section(entry, metric_names, index))
            index += 1
    parts.append('<pre id="selftest"></pre>')
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    output_dir = Path(output_dir)
    path = output_dir / "report.html"
    paths.write_text_atomic(path, "\n".join(parts))
    (output_dir / FILES).mkdir(parents=True, exist_ok=True)  # no images: no folder yet (local)
    paths.write_text_atomic(output_dir / FILES / "index.json", json.dumps(images, indent=1))
    return path
