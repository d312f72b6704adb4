"""tools/capture_check.py's comparison: two digests agree only within the stated tolerances."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import capture_check  # noqa: E402  (tools/ is not a package)

DIGEST = {"flags": "x", "device": "cpu:0",
          "admm": {"metrics": [{"loss/contextual": 2.0, "admm/s_norm": 0.5}],
                   "params": {"objective_params": {"sum": 10.0, "l2": 3.0}}}}


def test_identical_digests_agree():
    result = capture_check.compare(DIGEST, copy.deepcopy(DIGEST), 2e-2, 1e-3)
    assert result["agree"] and result["worst_metric_rel"] == 0.0


def test_a_metric_off_by_more_than_bf16_tolerance_disagrees_and_is_located():
    other = copy.deepcopy(DIGEST)
    other["admm"]["metrics"][0]["admm/s_norm"] = 0.5 * 1.05  # 5% off
    result = capture_check.compare(DIGEST, other, 2e-2, 1e-3)
    assert not result["agree"]
    assert abs(result["worst_metric_rel"] - 0.05 / 1.05) < 1e-9
    assert result["worst_metric_at"] == "admm step 0 admm/s_norm"


def test_params_are_held_to_their_own_tolerance():
    other = copy.deepcopy(DIGEST)
    other["admm"]["params"]["objective_params"]["l2"] = 3.0 * (1 + 5e-3)
    result = capture_check.compare(DIGEST, other, 2e-2, 1e-3)
    assert not result["agree"] and result["worst_metric_rel"] == 0.0
