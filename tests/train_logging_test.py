"""train_logging.py: metrics.jsonl after a kill (truncation to the resumed step)."""

from __future__ import annotations

import json

from lfcsr_jax.training import train_logging


def test_truncate_metrics_is_atomic_and_keeps_up_to_the_step(tmp_path):
    rows = [{"step": s, "phase": "pretrain"} for s in range(1, 9)]
    rows.insert(4, {"step": 4, "phase": "validation"})
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 9, "pha'  # cut by a kill
    (tmp_path / "metrics.jsonl").write_text(text)
    assert train_logging.truncate_metrics(tmp_path, 4) == 5
    kept = train_logging.read_metrics(tmp_path)
    assert [(r["step"], r["phase"]) for r in kept] == [
        (1, "pretrain"), (2, "pretrain"), (3, "pretrain"), (4, "pretrain"), (4, "validation")]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left
