"""What a compiled program launches, read from XLA's own texts: no accelerator needed.

Two texts, both written by the compiler (docs/design.md section 13):
- the optimised HLO module (`compiled.as_text()`): every kernel-launching instruction, each while
  body (and its condition) multiplied by the loop's `known_trip_count`, a conditional by its
  largest branch, calls descended into. Grouped by kind (cuDNN conv forward / data-gradient /
  weight-gradient, GEMM, fusions by what they hold, copies, collectives) and by model part and
  direction from each instruction's `op_name` metadata.
- the GPU thunk sequence (`*thunk_sequence_after_thunk_passes.txt` under `--xla_dump_to`): what
  the GPU runtime executes, with every command buffer (CUDA graph) and what it holds. A thunk
  outside every command buffer is launched from the host, once per execution of its loop body.

Both parsers are plain text functions, tested on hand-written texts and on a real compile.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable

# Opcodes that launch nothing on the device (bookkeeping, aliases, containers counted by content).
NO_KERNEL_OPCODES = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "add-dependency", "opt-barrier", "partition-id", "replica-id", "domain", "get-dimension-size",
    "while", "conditional", "call", "async-done", "copy-done", "all-reduce-done",
    "all-gather-done", "collective-permute-done", "send-done", "recv-done",
})
COLLECTIVE_OPCODES = frozenset({
    "all-reduce", "all-reduce-start", "all-gather", "all-gather-start", "reduce-scatter",
    "all-to-all", "collective-permute", "collective-permute-start", "send", "recv",
})
CUSTOM_CALL_KINDS = {
    "__cudnn$convForward": "conv_forward",
    "__cudnn$convBiasActivationForward": "conv_forward",
    "__cudnn$convBackwardInput": "conv_data_gradient",
    "__cudnn$convBackwardFilter": "conv_weight_gradient",
    "__cublas$gemm": "gemm",
    "__cublas$lt$matmul": "gemm",
    "__cublas$lt$matmul$f8": "gemm",
}
# Model parts, from the Flax module names in op_name (first match wins; order matters: the VGG
# and the discriminator run inside loss code, the generators inside LFcSR).
PART_PATTERNS = (
    ("VGG19", re.compile(r"VGG19|VGGFeatures")),
    ("D", re.compile(r"Discriminator")),
    ("G_O", re.compile(r"\bHAN\b|HAN\)|HAN/|/objective/")),
    ("G_P", re.compile(r"ResClique|/perceptual/")),
)

_COMPUTATION_START = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")
_CALLED = {
    "body": re.compile(r"\bbody=%?([\w.\-]+)"),
    "condition": re.compile(r"\bcondition=%?([\w.\-]+)"),
    "to_apply": re.compile(r"\bto_apply=%?([\w.\-]+)"),
    "calls": re.compile(r"\bcalls=%?([\w.\-]+)"),
}
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRUE_FALSE = re.compile(r"(?:true|false)_computation=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    text: str  # everything after '='

    def called(self, key: str) -> str | None:
        match = _CALLED[key].search(self.text)
        return match.group(1) if match else None

    @property
    def op_name(self) -> str:
        match = _OP_NAME.search(self.text)
        return match.group(1) if match else ""


def _skip_shape(rest: str) -> str:
    """The text after an instruction's result shape (a tuple shape is a balanced '(...)')."""
    rest = rest.lstrip()
    if not rest.startswith("("):
        return rest.split(" ", 1)[1] if " " in rest else ""
    depth = 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return rest[index + 1:]
    return ""


def parse_hlo_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
    """({computation name: instructions}, name of the ENTRY computation) of an HLO module text."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in text.splitlines():
        start = _COMPUTATION_START.match(line)
        if start and not line.startswith(" "):
            current = start.group(1)
            computations[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is None:
            continue
        instruction = _INSTRUCTION.match(line)
        if not instruction:
            continue
        rest = instruction.group(2)
        opcode = _OPCODE.match(_skip_shape(rest))
        if opcode:
            computations[current].append(Instruction(instruction.group(1), opcode.group(1), rest))
    if not entry:
        raise ValueError("HLO text has no ENTRY computation")
    return computations, entry


def kernel_kind(instruction: Instruction) -> str:
    """The kind a kernel-launching instruction is reported under."""
    if instruction.opcode == "custom-call":
        target = _TARGET.search(instruction.text)
        return CUSTOM_CALL_KINDS.get(target.group(1) if target else "", "custom_call_other")
    if instruction.opcode == "fusion":
        name = instruction.name
        for piece in ("dynamic_update_slice", "dynamic_slice", "dynamic-slice", "reduce",
                      "transpose", "concatenate", "convert", "select", "copy", "gemm", "triton"):
            if piece in name:
                return "fusion_" + piece.replace("-", "_")
        return "fusion_other"
    if instruction.opcode in ("copy", "copy-start"):
        return "copy"
    if instruction.opcode in COLLECTIVE_OPCODES:
        return "collective"
    return instruction.opcode


def model_part(op_name: str) -> str:
    """'G_O' / 'G_P' / 'D' / 'VGG19' / 'other', plus '_bwd' for the backward (a transpose)."""
    part = next((label for label, pattern in PART_PATTERNS if pattern.search(op_name)), "other")
    return part + ("_bwd" if "transpose(" in op_name else "_fwd")


@dataclasses.dataclass
class KernelCounts:
    """Kernels per execution of a compiled program (loops multiplied out)."""

    total: int = 0
    by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    by_part: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    while_loops: int = 0
    unknown_trip_counts: int = 0  # loops counted once: their trip count was not known

    def add(self, other: "KernelCounts", times: int) -> None:
        self.total += times * other.total
        for key, value in other.by_kind.items():
            self.by_kind[key] += times * value
        for key, value in other.by_part.items():
            self.by_part[key] += times * value
        self.while_loops += other.while_loops
        self.unknown_trip_counts += other.unknown_trip_counts

    def as_dict(self) -> dict:
        return {"kernels": self.total, "by_kind": dict(sorted(self.by_kind.items())),
                "by_part": dict(sorted(self.by_part.items())), "while_loops": self.while_loops,
                "unknown_trip_counts": self.unknown_trip_counts}


def _branches(instruction: Instruction) -> list[str]:
    match = _BRANCHES.search(instruction.text)
    if match:
        return [name.strip().lstrip("%") for name in match.group(1).split(",") if name.strip()]
    return _TRUE_FALSE.findall(instruction.text)


_S32_CONSTANT = re.compile(r"^s32\[\][^ ]*\s+constant\((\d+)\)")


def trip_count(loop: Instruction, computations: dict[str, list[Instruction]]) -> int | None:
    """Iterations of a while loop: XLA's `known_trip_count` (the GPU compiler records it), else
    read from a condition of the form `i < N` with one s32 constant N (what a scan lowers to,
    counting from 0 by 1; the TPU compiler keeps that condition but no backend config)."""
    known = _TRIP_COUNT.search(loop.text)
    if known:
        return int(known.group(1))
    condition = computations.get(loop.called("condition") or "", [])
    constants = [m.group(1) for i in condition if i.opcode == "constant"
                 for m in [_S32_CONSTANT.match(i.text)] if m]
    compares = [i for i in condition if i.opcode == "compare"]
    if len(constants) == 1 and len(compares) == 1 and "direction=LT" in compares[0].text:
        return int(constants[0])
    return None


def count_kernels(text: str) -> KernelCounts:
    """Kernel launches per execution of the optimised HLO module `text` (see module docstring)."""
    computations, entry = parse_hlo_module(text)
    memo: dict[str, KernelCounts] = {}

    def count(name: str) -> KernelCounts:
        if name in memo:
            return memo[name]
        result = KernelCounts()
        for instruction in computations.get(name, []):
            opcode = instruction.opcode
            if opcode == "while":
                trip = trip_count(instruction, computations)
                times = trip or 1
                result.while_loops += 1
                result.unknown_trip_counts += 0 if trip else 1
                result.add(count(instruction.called("body") or ""), times)
                result.add(count(instruction.called("condition") or ""), times + 1)
            elif opcode == "conditional":
                branches = [count(branch) for branch in _branches(instruction)]
                if branches:
                    result.add(max(branches, key=lambda c: c.total), 1)
            elif opcode in ("call", "async-start"):
                callee = instruction.called("to_apply") or instruction.called("calls")
                result.add(count(callee or ""), 1)
            elif opcode not in NO_KERNEL_OPCODES:
                result.total += 1
                result.by_kind[kernel_kind(instruction)] += 1
                result.by_part[model_part(instruction.op_name)] += 1
        memo[name] = result
        return result

    return count(entry)


# ----------------------------------------------------------------------------- thunk sequences

_THUNK_LINE = re.compile(r"^(\s*)(\d+):\s+(k\w+)")
CONTAINER_THUNKS = frozenset({"kWhile", "kConditional", "kCommandBuffer", "kSequential"})


@dataclasses.dataclass
class ThunkSummary:
    """The structure of a GPU thunk sequence (static: each thunk once, loops not multiplied)."""

    top_level: int = 0
    thunks: int = 0
    command_buffers: int = 0
    outside_command_buffers: int = 0  # launch-level thunks with no command buffer around them
    convolutions_outside: int = 0
    host_loops: int = 0  # while/conditional thunks driven from the host
    outside_by_kind: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def as_dict(self) -> dict:
        return {"top_level_thunks": self.top_level, "thunks": self.thunks,
                "command_buffers": self.command_buffers,
                "outside_command_buffers": self.outside_command_buffers,
                "convolutions_outside_command_buffers": self.convolutions_outside,
                "host_driven_loops": self.host_loops,
                "outside_by_kind": dict(sorted(self.outside_by_kind.items()))}


def summarise_thunks(text: str) -> ThunkSummary:
    """Reads a `thunk_sequence_after_thunk_passes` text. Nesting is by indentation: a thunk's
    parent is the nearest thunk above it with less indentation (`condition:` / `body:` labels
    are skipped). A thunk nested under a kDynamicSliceFusion is part of that one launch."""
    summary = ThunkSummary()
    stack: list[tuple[int, str]] = []  # (indent, kind) of the open ancestors
    for line in text.splitlines():
        match = _THUNK_LINE.match(line)
        if not match:
            continue
        indent, kind = len(match.group(1)), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        ancestors = [k for _, k in stack]
        stack.append((indent, kind))
        summary.thunks += 1
        summary.top_level += not ancestors
        if kind == "kCommandBuffer":
            summary.command_buffers += 1
        if "kCommandBuffer" in ancestors or "kDynamicSliceFusion" in ancestors:
            continue
        if kind in ("kWhile", "kConditional"):
            summary.host_loops += 1
        elif kind not in CONTAINER_THUNKS:
            summary.outside_command_buffers += 1
            summary.outside_by_kind[kind] += 1
            summary.convolutions_outside += kind == "kConvolution"
    return summary


def merge_thunk_summaries(summaries: Iterable[ThunkSummary]) -> ThunkSummary:
    total = ThunkSummary()
    for summary in summaries:
        for field in ("top_level", "thunks", "command_buffers", "outside_command_buffers",
                      "convolutions_outside", "host_loops"):
            setattr(total, field, getattr(total, field) + getattr(summary, field))
        total.outside_by_kind.update(summary.outside_by_kind)
    return total
