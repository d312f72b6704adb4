"""Device-time attribution of a profiled step (lfcsr_jax/perf/trace_summary.py) on a hand-made trace
whose answer is known: busy time is the union of kernel intervals, parts come from the HLO
op_name metadata, and host events are ignored."""

from __future__ import annotations

import gzip
import json

import pytest

from lfcsr_jax.perf import trace_summary

HLO = """
HloModule jit_admm_step
  %fusion.1 = bf16[16,36,36,64]{3,2,1,0} fusion(...), kind=kLoop, metadata={op_name="jit(admm_step)/jvp(HAN)/groups/blocks/conv1/conv_general_dilated" source_file="x.py"}
  %cudnn-conv.2 = (bf16[16,36,36,64]{3,2,1,0}, u8[0]{0}) custom-call(...), metadata={op_name="jit(admm_step)/transpose(jvp(ResClique))/blocks/ll1_conv/conv_general_dilated"}
  ROOT %add.3 = f32[] add(...), metadata={op_name="jit(admm_step)/Discriminator/Dense_0/dot_general"}
  %copy.4 = f32[2] copy(...)
"""


def _trace(tmp_path):
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
        # Two steps' worth of kernels: [0, 10) and [5, 20) overlap on two streams -> busy 20 us.
        {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 10, "name": "fusion.1",
         "args": {"hlo_op": "fusion.1"}},
        {"ph": "X", "pid": 1, "tid": 2, "ts": 5, "dur": 15, "name": "sm90_xmma_dgrad_kernel",
         "args": {"hlo_op": "cudnn-conv.2"}},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 100, "dur": 30, "name": "add.3",
         "args": {"hlo_op": "add.3"}},
        {"ph": "X", "pid": 1, "tid": 1, "ts": 200, "dur": 6, "name": "copy.4",
         "args": {"hlo_op": "copy.4"}},
        {"ph": "X", "pid": 2, "tid": 1, "ts": 0, "dur": 9999, "name": "python_host_event"},
    ]
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump({"traceEvents": events}, handle)
    return str(path)


def test_hlo_op_names_map_instructions_to_their_scopes():
    names = trace_summary.hlo_op_names(HLO)
    assert names["fusion.1"].endswith("conv1/conv_general_dilated")
    assert names["add.3"].startswith("jit(admm_step)/Discriminator")
    assert "copy.4" not in names  # no metadata, no entry


def test_summary_of_a_known_trace(tmp_path):
    events = trace_summary.load_events(_trace(tmp_path))
    summary = trace_summary.summarise(events, steps=2, names=trace_summary.hlo_op_names(HLO),
                                      wall_ms_per_step=0.5)
    assert summary["device_streams"] == 1
    assert summary["kernels_per_step"] == 2.0  # 4 device kernels over 2 steps; host ignored
    # busy = union: [0, 20) + [100, 130) + [200, 206) = 56 us -> 0.028 ms per step
    assert summary["busy_ms_per_step"] == pytest.approx(0.028)
    assert summary["kernel_ms_per_step"] == pytest.approx(0.0305)  # 61 us of kernels / 2
    assert summary["busy_fraction"] == pytest.approx(0.028 / 0.5)
    parts = summary["by_part_ms_per_step"]
    assert parts["G_O fwd"] == pytest.approx(0.005)
    assert parts["G_P bwd"] == pytest.approx(0.0075)
    assert parts["D fwd"] == pytest.approx(0.015)
    assert parts["other"] == pytest.approx(0.003)


def test_op_kind_drops_instance_numbers():
    assert trace_summary.op_kind("loop_add_fusion.12") == "loop_add_fusion"
    assert trace_summary.op_kind("input_reduce_fusion_3") == "input_reduce_fusion"
