"""Validation during training: both stages scored by the paper protocol, LPIPS when configured."""

from __future__ import annotations

import functools
import shutil

import jax
import numpy as np
import pytest

from configs import x4
from lfcsr_jax.evaluation import lpips, metrics
from lfcsr_jax.training import train, train_state, validation


class _Recorder:
    def __init__(self):
        self.rows = []

    def write_validation(self, step, values):
        self.rows.append((step, values))


@pytest.fixture(scope="module")
def tiny_state():
    jax.config.update("jax_disable_most_optimizations", True)
    config = x4.get_config("tiny")
    networks = train_state.make_networks(config)
    with jax.threefry_partitionable(False):
        state = jax.jit(functools.partial(train_state.init_train_state, config=config,
                                          networks=networks))(jax.random.PRNGKey(0))
    yield config, networks, state
    jax.config.update("jax_disable_most_optimizations", False)


def _lpips_dir(tmp_path, shared_data):
    """Real v0.1 heads beside a random AlexNet in torchvision layout (no ImageNet weights here)."""
    folder = tmp_path / "lpips"
    (folder / "v0.1").mkdir(parents=True)
    shutil.copy(shared_data / "weights" / "lpips" / "v0.1" / "alex.npz", folder / "v0.1")
    rng = np.random.default_rng(0)
    state_dict, c_in = {}, 3
    for index, c_out, kernel, _, _ in lpips.ALEXNET_CONVS:
        state_dict[f"features.{index}.weight"] = 0.05 * rng.standard_normal(
            (c_out, c_in, kernel, kernel)).astype(np.float32)
        state_dict[f"features.{index}.bias"] = np.zeros(c_out, np.float32)
        c_in = c_out
    np.savez(folder / "alexnet_random.npz", **state_dict)
    return folder


def test_validation_scores_both_stages_like_the_metrics_module(tiny_state, tmp_path, shared_data):
    config, networks, state = tiny_state
    config = config.copy_and_resolve_references()
    config.train.lpips_dir = str(_lpips_dir(tmp_path, shared_data))
    train.validate_config(config)
    assert validation.best_metric_modes(config) == {"psnr_perceptual": "max",
                                                    "lpips_perceptual": "min"}
    validator = validation.Validator(config, networks)
    recorder = _Recorder()
    scores = validator.validate(state, 7, recorder)
    assert recorder.rows == [(7, scores)]
    for stage in ("objective", "perceptual", "bicubic"):
        for metric in ("psnr", "ssim", "lpips"):
            assert np.isfinite(scores[f"{metric}_{stage}"]), (metric, stage)
    # Recompute the objective stage's PSNR of the first image independently.
    image = validator.images[0]
    params = train_state.generator_params(state)
    y_objective = networks.objective.apply({"params": params["objective"]},
                                           image["lr"][None].astype(np.float32))
    first = metrics.psnr_y(metrics.quantize(np.asarray(y_objective[0])), image["hr"], crop=4)
    others = [metrics.psnr_y(metrics.quantize(np.asarray(networks.objective.apply(
        {"params": params["objective"]}, im["lr"][None].astype(np.float32))[0])), im["hr"], crop=4)
        for im in validator.images[1:]]
    assert scores["psnr_objective"] == pytest.approx(np.mean([first, *others]), abs=1e-9)
    # NIQE (the shipped LIVE model) beside PSNR/SSIM, and the summary links the HTML report.
    assert all(np.isfinite(scores[f"niqe_{stage}"]) for stage in ("objective", "perceptual", "bicubic"))
    validator.write_summary(tmp_path, 7, scores, tmp_path / "export")
    summary = (tmp_path / "summary.md").read_text()
    assert "NIQE" in summary and "report/report.html" in summary
    assert (tmp_path / "report" / "report.html").is_file()


def test_lpips_dir_without_backbone_is_refused_before_training(tmp_path):
    config = x4.get_config("tiny")
    (tmp_path / "v0.1").mkdir()
    config.train.lpips_dir = str(tmp_path)
    with pytest.raises(train.UserError, match="AlexNet ImageNet weights"):
        train.validate_config(config)


def test_demo_validation_photos_are_disjoint_from_its_training_photos():
    from pathlib import Path

    from lfcsr_jax.input import input_pipeline

    config = x4.get_config("demo")
    assert config.input.source == "skimage"
    validation_names = [x["name"] for x in input_pipeline.load_validation_set(config.input, 4)]
    training_names = [p.origin for p in input_pipeline.load_training_images(config.input, 4)]
    assert len(validation_names) == config.input.val_count
    assert not set(validation_names) & {Path(n).stem for n in training_names}
    # Natural photos only: a synthetic gradient (color.png) made bicubic look unbeatable.
    assert "color" not in validation_names


def test_summary_explains_each_row_and_names_the_data(tiny_state, tmp_path):
    config, networks, state = tiny_state
    validator = validation.Validator(config, networks)
    scores = validator.validate(state, 4, _Recorder())
    validator.write_summary(tmp_path, 4, scores, tmp_path / "export")
    summary = (tmp_path / "summary.md").read_text()
    for row in ("bicubic", "objective", "perceptual"):
        assert f"| {row} |" in summary and f"- **{row}**" in summary
    assert "Y'" in summary and "NIQE" in summary
    assert "[report/report.html](report/report.html)" in summary
    # Which photos trained and which validated, and that the demo is not the paper's model.
    for image in validator.images:
        assert image["name"] in summary
    assert "astronaut" in summary and "never trained on" in summary
    assert "offline demo" in summary and "600,000 steps" in summary
    # The numbers in words, whichever way they go.
    assert validation._verdict({"psnr_objective": 29.2, "psnr_bicubic": 28.7, "niqe_objective": 6.0,
                                "niqe_perceptual": 7.9}) == [
        "- Y' is 0.50 dB above bicubic in PSNR.",
        "- Y's NIQE is higher (worse) than Y' (7.90 vs 6.00): this run's perceptual stage does not "
        "show the paper's perceptual gain (it needs far more PD-ADMM training and ImageNet VGG19 "
        "weights)."]
    assert "below bicubic" in validation._verdict({"psnr_objective": 30.0, "psnr_bicubic": 31.0})[0]
