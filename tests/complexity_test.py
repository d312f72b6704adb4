"""complexity: hand MAC counts against docs/design.md section 10 and hand-derived layer sums, the
parameter counts of docs/design.md sections 2-4, and the JSON program on the tiny config."""

from __future__ import annotations

import json

import pytest

from configs import x4
from lfcsr_jax import complexity


def test_hand_counts_match_reference_for_the_paper_model():
    cfg = x4.get_config().model.to_dict()
    hand = complexity.hand_count(cfg)
    assert hand["objective"]["total"] == pytest.approx(16.41e6, rel=1e-3)
    assert hand["perceptual"]["total"] == pytest.approx(10.37e6, rel=1e-3)
    # 128x128 x4 inference: about 0.88 TFLOP (docs/design.md section 10).
    assert 2 * hand["total"] * 128**2 == pytest.approx(0.88e12, rel=5e-3)
    # One RCAB pair of 3x3 64->64 convs, 200 of them + 10 group convs, by hand.
    assert hand["objective"]["layers"]["residual_groups"] == 210 * 9 * 64 * 64 + 200 * 9 * 64 * 64
    assert complexity.discriminator_macs(144) == pytest.approx(1.46e9, rel=2e-3)


def test_parameter_counts_of_the_paper_model():
    config = x4.get_config()
    counts = complexity.parameter_counts(config.model.to_dict(), 144)
    assert counts["generator_objective"] == 16_071_745
    assert counts["generator_perceptual"] == 2_601_420
    assert counts["discriminator"] == 86_083_009


def test_program_json_on_tiny_config(tmp_path):
    out_file = tmp_path / "c.json"
    out = complexity.main(["--config=configs/x4.py:tiny", "--latency_size=16", "--repeats=1",
                           f"--output={out_file}"])
    saved = json.loads(out_file.read_text())
    assert saved == json.loads(json.dumps(out))
    assert {"params", "mac_per_lr_pixel", "flops_per_lr_pixel", "inference",
            "discriminator_mac_per_hr_patch"} <= saved.keys()
    assert saved["inference"]["median_s"] > 0
    flops = saved["flops_per_lr_pixel"]
    assert flops["hand_total"] == 2 * saved["mac_per_lr_pixel"]["total"]
    assert flops["xla_cost_analysis"] > 0
    assert saved["params"]["discriminator"] > saved["params"]["generator_total"]
