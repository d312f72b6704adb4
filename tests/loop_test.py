"""loop.py: phases by step, the global batch, the checkpoint record, the non-finite stop."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lfcsr_jax.training import loop


class _FakeCheckpoints:
    directory = Path("/runs/x/checkpoints")

    def __init__(self, latest):
        self.latest = latest

    def wait_until_finished(self):
        pass

    def latest_step(self):
        return self.latest


def _loop_with(checkpoints) -> loop.TrainLoop:
    return loop.TrainLoop(steps={}, lengths={}, vgg_params=None, batch_sharding=None,
                          stream=iter(()), writer=None, stop=None, checkpoints=checkpoints)


def test_non_finite_message_names_the_metrics_step(capsys):
    # The bad step's 0-based index is 5; metrics.jsonl records it as step 6.
    assert _loop_with(_FakeCheckpoints(4)).stop_non_finite(5) == 3
    out = capsys.readouterr().out
    assert "at step 6:" in out and "(step 4)" in out
    _loop_with(_FakeCheckpoints(None)).stop_non_finite(0)
    out = capsys.readouterr().out
    assert "None" not in out and "No checkpoint had been saved yet" in out



def test_phase_boundaries():
    lengths = {"pretrain": 3, "admm": 2}
    assert [loop.phase_at(step, lengths)[0] for step in range(6)] == [
        "pretrain", "pretrain", "pretrain", "admm", "admm", None]
    assert loop.phase_at(4, lengths) == ("admm", 1)


def test_phase_at_skips_empty_phases_and_counts_within_each():
    lengths = {"pretrain": 0, "admm": 2}
    assert loop.phase_at(0, lengths) == ("admm", 0)
    assert loop.phase_at(1, lengths) == ("admm", 1)
    assert loop.phase_at(2, lengths) == (None, 0)
    assert loop.phase_at(0, {}) == (None, 0)


def test_step_record_names_the_phase_and_the_data_position():
    lengths = {"pretrain": 3, "admm": 2}
    assert loop.step_record(3, lengths) == {"step": 3, "phase": "admm", "data_position": 3}
    assert loop.step_record(5, lengths, {"x": 1}) == {"step": 5, "phase": "done",
                                                      "data_position": 5, "x": 1}


def test_global_batch_is_one_array_per_field_split_on_data():
    # conftest.py gives this process 4 CPU devices; one process holds every row.
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    rows = 2 * jax.device_count()
    local = {"lr": np.arange(rows * 3 * 3 * 3, dtype=np.uint8).reshape(rows, 3, 3, 3),
             "hr": np.zeros((rows, 12, 12, 3), np.uint8)}
    batch = loop.global_batch(local, sharding)
    assert set(batch) == {"lr", "hr"}
    assert batch["lr"].shape == (rows, 3, 3, 3) and batch["hr"].shape == (rows, 12, 12, 3)
    assert batch["lr"].sharding == sharding
    assert len(batch["lr"].addressable_shards) == jax.device_count()
    assert batch["lr"].addressable_shards[0].data.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(np.asarray(batch["lr"]), local["lr"])


def test_total_steps_sums_the_phases():
    trainer = _loop_with(None)
    trainer.lengths = {"pretrain": 3, "admm": 4}
    assert trainer.total_steps == 7
