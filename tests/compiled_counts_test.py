"""compiled_counts on hand-written HLO and thunk texts, where every expected count is by hand."""

from lfcsr_jax.perf import compiled_counts as cc

# ENTRY: one fusion, a while of 5 iterations (body: a dynamic-slice fusion, a cuDNN forward conv,
# an add fusion; condition: a compare fusion), a copy, and a conditional whose larger branch has
# two kernels. Bookkeeping (parameter, tuple, get-tuple-element, bitcast, constant) launches none.
HLO = """\
HloModule jit_step, entry_computation_layout={()->()}

%fused_add (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%p0, %p0)
}

%body (arg: (s32[], f32[4])) -> (s32[], f32[4]) {
  %arg = (s32[], f32[4]{0}) parameter(0)
  %gte.0 = s32[] get-tuple-element(%arg), index=0
  %gte.1 = f32[4]{0} get-tuple-element(%arg), index=1
  %loop_dynamic_slice_fusion = f32[1]{0} fusion(%gte.1, %gte.0), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/jvp(HAN)/while/body/dynamic_slice"}
  %cudnn-conv.1 = (f32[4]{0}, u8[0]{0}) custom-call(%gte.1), custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/jvp(HAN)/while/body/conv_general_dilated"}
  %loop_add_fusion = f32[4]{0} fusion(%gte.1), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/transpose(jvp(ResClique))/while/body/add"}
  ROOT %tuple.1 = (s32[], f32[4]{0}) tuple(%gte.0, %loop_add_fusion)
}

%cond (arg.1: (s32[], f32[4])) -> pred[] {
  %arg.1 = (s32[], f32[4]{0}) parameter(0)
  ROOT %loop_compare_fusion = pred[] fusion(%arg.1), kind=kLoop, calls=%fused_add
}

%branch_a (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  ROOT %wrapped_neg = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_add
}

%branch_b (y: f32[4]) -> f32[4] {
  %y = f32[4]{0} parameter(0)
  %gemm.2 = (f32[4]{0}, s8[0]{0}) custom-call(%y), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(step)/jvp(Discriminator)/dot_general"}
  %gte.9 = f32[4]{0} get-tuple-element(%gemm.2), index=0
  ROOT %input_reduce_fusion = f32[4]{0} fusion(%gte.9), kind=kInput, calls=%fused_add
}

ENTRY %main (a: f32[4], i: s32[]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %i = s32[] parameter(1)
  %c = s32[] constant(0)
  %loop_convert_fusion = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_add
  %tuple.0 = (s32[], f32[4]{0}) tuple(%c, %loop_convert_fusion)
  %while.1 = (s32[], f32[4]{0}) while(%tuple.0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"},"known_init_step":{"init":"0","step":"1"}}
  %gte.5 = f32[4]{0} get-tuple-element(%while.1), index=1
  %copy.3 = f32[4]{0} copy(%gte.5)
  %bitcast.1 = f32[4]{0} bitcast(%copy.3)
  ROOT %conditional.1 = f32[4]{0} conditional(%i, %bitcast.1, %bitcast.1), branch_computations={%branch_a, %branch_b}
}
"""


def test_kernels_multiply_loops_and_take_the_larger_branch():
    counts = cc.count_kernels(HLO)
    # 1 convert fusion + 5 x (3 body kernels) + 6 x (1 condition kernel) + 1 copy + 2 (branch b)
    assert counts.total == 1 + 15 + 6 + 1 + 2
    assert counts.by_kind["conv_forward"] == 5
    assert counts.by_kind["fusion_dynamic_slice"] == 5
    assert counts.by_kind["gemm"] == 1
    assert counts.by_kind["fusion_reduce"] == 1
    assert counts.by_kind["copy"] == 1
    assert counts.by_kind["fusion_convert"] == 1
    assert counts.while_loops == 1 and counts.unknown_trip_counts == 0
    assert counts.by_part["G_O_fwd"] == 10  # the dynamic slice and the conv, 5 times each
    assert counts.by_part["G_P_bwd"] == 5
    assert counts.by_part["D_fwd"] == 1


def test_a_loop_without_a_known_trip_count_counts_once_and_is_flagged():
    text = HLO.replace(', backend_config={"known_trip_count":{"n":"5"},'
                       '"known_init_step":{"init":"0","step":"1"}}', "")
    assert text != HLO
    counts = cc.count_kernels(text)
    assert counts.total == 1 + 3 + 2 + 1 + 2
    assert counts.unknown_trip_counts == 1


def test_tuple_shapes_with_index_comments_parse():
    computations, entry = cc.parse_hlo_module(HLO.replace(
        "(s32[], f32[4]{0}) while(", "(s32[], f32[4]{0}, /*index=2*/pred[]) while("))
    assert entry == "main"
    assert [i.opcode for i in computations["main"]].count("while") == 1


def test_model_part_reads_flax_module_names_and_direction():
    assert cc.model_part("jit(admm_step)/jvp(HAN)/while/body/closed_call/conv") == "G_O_fwd"
    assert cc.model_part("jit(admm_step)/transpose(jvp(ResClique))/x") == "G_P_bwd"
    assert cc.model_part("jit(admm_step)/VGG19/conv") == "VGG19_fwd"
    assert cc.model_part("jit(admm_step)/mul") == "other_fwd"


# Two top-level command buffers and a host-driven while whose body holds a command buffer and a
# convolution outside it; a dynamic-slice fusion's nested copy is part of that one launch.
THUNKS = """\
000: kCommandBuffer [source       | next=003 (1)]
    001: kCustomKernel [source       | sink        ] loop_broadcast_fusion grid: [1, 1, 1]
    002: kConvolution  [source       | sink        ] kConvolution
003: kWhile         [prev=000 (1) | next=010 (1)]
condition:
    004: kCustomKernel [source | sink] loop_compare_fusion grid: [1, 1, 1]
  body:
    005: kCommandBuffer [source | sink]
        006: kCustomKernel [source | sink] loop_add_fusion
    007: kConvolution [source | sink] kConvolution
    008: kDynamicSliceFusion [source | sink] params=1, results=1
        009: kCopy [source | sink] kCopy
010: kCommandBuffer [prev=003 (1) | sink]
    011: kGemm [source | sink] kGemm
012: kCopy [source | sink] kCopy
"""


def test_thunk_summary_by_hand():
    summary = cc.summarise_thunks(THUNKS)
    assert summary.top_level == 4  # 000, 003, 010, 012
    assert summary.thunks == 13
    assert summary.command_buffers == 3
    assert summary.host_loops == 1
    # outside: the condition's compare, the body's conv and dynamic-slice fusion, the last copy
    assert summary.outside_command_buffers == 4
    assert summary.convolutions_outside == 1
    assert summary.outside_by_kind == {"kCustomKernel": 1, "kConvolution": 1,
                                       "kDynamicSliceFusion": 1, "kCopy": 1}


def test_merge_adds_fields():
    one = cc.summarise_thunks(THUNKS)
    two = cc.merge_thunk_summaries([one, one])
    assert two.thunks == 26 and two.convolutions_outside == 2
    assert two.outside_by_kind["kCopy"] == 2


def test_trip_count_is_read_from_an_i_less_than_n_condition_when_no_backend_config():
    # What the TPU compiler leaves: no known_trip_count, a condition `i < 7` (a scan of 7).
    text = HLO.replace(', backend_config={"known_trip_count":{"n":"5"},'
                       '"known_init_step":{"init":"0","step":"1"}}', "")
    text = text.replace(
        "  ROOT %loop_compare_fusion = pred[] fusion(%arg.1), kind=kLoop, calls=%fused_add\n",
        "  %c.7 = s32[]{:T(128)} constant(7)\n  %g = s32[] get-tuple-element(%arg.1), index=0\n"
        "  ROOT %lt = pred[]{:T(512)} compare(%g, %c.7), direction=LT\n")
    counts = cc.count_kernels(text)
    assert counts.unknown_trip_counts == 0
    # 1 convert + 7 x 3 body kernels + 8 x 1 (the compare) + 1 copy + 2 (branch b)
    assert counts.total == 1 + 21 + 8 + 1 + 2
