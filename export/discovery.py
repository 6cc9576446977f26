"""Find the attention gates in an exported ONNX graph and promote them to named outputs.

A gate is a Sigmoid / HardSigmoid / Softmax (or a hard sigmoid written as arithmetic: a Clip to [0, 6]
divided by 6) whose result, possibly through reshapes, transposes,
expands, an added constant (``1 + sigmoid(...)``) or a constant scale, multiplies a feature tensor. Its
shape against that feature says what it is: N×1×H×W spatial, N×C(×1×1) channel, N×C×H×W full (its
channel mean is also emitted as a spatial map), N×C×H×1 / N×C×1×W coordinate-attention axes (a pair in
one module also gives the channel mean of their product as a spatial map). A gate that multiplies a
permuted view of its feature (triplet attention's ``x.permute(0, 2, 1, 3)`` → gate → permute back) is
turned back into the feature's own frame first: a gate over the permuted view's (C, W) plane is an
N×C×1×W axis map of the feature, one over (H, C) an N×C×H×1 one. ``x * sigmoid(x)`` (SiLU,
Swish) is an activation and ``heat * (maxpool(heat) == heat)`` a peak mask: neither is a gate. A
softmax over a feature's positions that pools it (``feature @ softmax``: global-context blocks) is
its spatial attention too. Each
output is named after the module that applies the gate, e.g. ``layer3.1.cbam.spatial``.

Every promoted map is matched to the value PyTorch computed in the same module (export.capture);
a gate without such a match is reported and left out, never emitted unverified. A graph with no
PyTorch behind it (export.importer) gives no records: there a gate must be finite and within [0, 1].
"""

import ast
import re
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from attnserve.export.adapter import INPUT_NAME, MODEL_ATTR
from attnserve.export.capture import GateRecord
from attnserve.export.graph import constant_values
from attnserve.maps import AXIS_H, AXIS_W, CHANNEL, FULL, SPATIAL

GATE_OPS = {"Sigmoid", "HardSigmoid", "Softmax"}
PASS_THROUGH = {"Reshape", "Unsqueeze", "Squeeze", "Expand", "Flatten", "Transpose", "Identity", "Cast"}
MATCH_TOLERANCE = 1e-4


@dataclass
class Gate:
    tensor: str  # the gate op's output in the graph
    feature: str  # the tensor it multiplies
    scope: str  # the module the gate op ran in (named_modules() path of the user's model)
    source: str  # the module it belongs to: scope, less a leaf that is only the activation itself
    shape: tuple[int, ...] = ()
    feature_shape: tuple[int, ...] = ()
    kind: str = ""
    record: int = -1  # index of the matching PyTorch GateRecord
    pooling: bool = False  # a softmax over positions that pools the feature, not a product with it
    permuted: list[int] = field(default_factory=list)  # the Transpose perm the feature is a view by
    applied: str = ""  # with ``permuted``: the gate as it multiplies the permuted view (4-d, broadcast)
    applied_shape: tuple[int, ...] = ()

    def in_feature_frame(self, value: np.ndarray) -> np.ndarray:
        """A value of the gate tensor (any batch) in its feature's frame: as applied, un-permuted."""
        if not self.permuted:
            return value
        return value.reshape(-1, *self.applied_shape[1:]).transpose(_inverse(self.permuted))


@dataclass
class PromotedMap:
    name: str
    kind: str
    source: str
    gates: list[Gate]  # one gate; two for a coordinate-attention pair
    derived: str = ""  # "" the gate itself; "channel_mean" of a full gate; "axis_product" of a pair
    shape: list[int] = field(default_factory=list)  # at batch 1

    def expected(self, records: list[GateRecord]) -> np.ndarray:
        """The same map computed from PyTorch's recorded gate values."""
        values = [
            g.in_feature_frame(records[g.record].value.float().numpy().reshape(-1, *g.shape[1:]))
            for g in self.gates
        ]
        n = values[0].shape[0]
        if self.derived == "axis_product":
            h, w = (v.reshape(n, *_canonical_shape(g)) for v, g in zip(values, self.gates, strict=True))
            return (h * w).mean(axis=1, keepdims=True)
        gate = values[0].reshape(n, *_canonical_shape(self.gates[0]))
        return gate.mean(axis=1, keepdims=True) if self.derived == "channel_mean" else gate


def discover(
    proto: onnx.ModelProto, sample: np.ndarray, records: list[GateRecord] | None
) -> tuple[list[PromotedMap], list[str]]:
    """The maps to promote, and a line for each gate found but left out (and why). ``records`` None:
    no PyTorch values to match, each gate's range is checked instead."""
    gates = find_gates(proto)
    if not gates:
        return [], []
    values = probe(proto, sample, [t for g in gates for t in (g.tensor, g.feature, g.applied) if t])
    kept, skipped = [], []
    for gate in gates:
        gate.shape, gate.feature_shape = values[gate.tensor].shape, values[gate.feature].shape
        where = f"{gate.tensor} in {gate.scope or 'the top-level module'}"
        if gate.pooling and sum(d != 1 for d in gate.shape[1:]) != 1:
            continue  # not one distribution over positions: self-attention, found elsewhere
        frame_shape = gate.shape
        if gate.permuted:
            gate.applied_shape = values[gate.applied].shape
            if len(gate.applied_shape) != 4 or values[gate.applied].size != values[gate.tensor].size:
                skipped.append(
                    f"{where}: gates a view of its feature permuted by Transpose {gate.permuted} as "
                    f"{gate.applied_shape}, which is no 4-d reshape of the gate {gate.shape} to permute back"
                )
                continue
            frame_shape = tuple(gate.applied_shape[i] for i in _inverse(gate.permuted))
        gate.kind = classify(frame_shape, gate.feature_shape)
        if not gate.kind:
            seen = f" (after undoing Transpose {gate.permuted})" if gate.permuted else ""
            skipped.append(
                f"{where}: gate {frame_shape}{seen} on feature {gate.feature_shape} has no known layout"
            )
            continue
        if records is None:
            value = values[gate.tensor]
            if not (np.isfinite(value).all() and value.min() >= 0 and value.max() <= 1):
                skipped.append(
                    f"{where}: values in [{value.min():.3g}, {value.max():.3g}], not a gate's [0, 1]"
                )
            else:
                kept.append(gate)
            continue
        gate.record = match_record(values[gate.tensor], gate.scope, records)
        if gate.record < 0:  # TorchScript names a module's second call "name_1"
            gate.scope = re.sub(r"_\d+$", "", gate.scope)
            gate.record = match_record(values[gate.tensor], gate.scope, records)
        if gate.record < 0:
            skipped.append(f"{where}: no PyTorch activation in that module has the same values")
            continue
        kept.append(gate)
    return _maps_for(kept), skipped


def find_gates(proto: onnx.ModelProto) -> list[Gate]:
    graph = proto.graph
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    producer = {o: n for n in graph.node for o in n.output}
    constants = {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    # (gate tensor, what it is computed from, the node that names its scope)
    activations = [(n.output[0], n.input[0], n) for n in graph.node if n.op_type in GATE_OPS]
    activations += _arithmetic_hard_sigmoids(graph, consumers, producer)
    gated = _gate_values([a[0] for a in activations], consumers, constants)
    gates = []
    for tensor, argument, node in activations:
        scope = node_scope(node)
        product = _gating_product(tensor, consumers, constants, gated)
        if product is None:
            pooled = _pooled_feature(tensor, consumers, producer) if node.op_type == "Softmax" else None
            if pooled is not None:
                gates.append(Gate(tensor, pooled, scope, scope, pooling=True))
            continue
        mul, feature = product
        if feature == argument:  # x * sigmoid(x): an activation (SiLU, Swish, hard swish), not a gate
            continue
        if feature in _descendants(tensor, consumers):  # heat * (maxpool(heat) == heat): a mask
            continue
        # named after the module that applies the gate: the SE block, not the nn.Sigmoid inside it
        permuted, applied = _permuted_from(feature, mul.output[0], producer, consumers), ""
        if permuted:  # the gate is classified, verified and served in the un-permuted feature's frame
            applied = next(i for i in mul.input if i != feature)
            feature = _through_copies(feature, producer).input[0]
        gates.append(Gate(tensor, feature, scope, node_scope(mul), permuted=permuted, applied=applied))
    return gates


def _pooled_feature(
    tensor: str, consumers: dict[str, list[onnx.NodeProto]], producer: dict[str, onnx.NodeProto]
) -> str | None:
    """The 4-d feature a softmax's weights pool by a MatMul (through reshapes), else None."""
    pending, seen = [tensor], set()
    while pending:
        name = pending.pop()
        for node in consumers.get(name, []):
            if node.op_type in PASS_THROUGH and node.input[0] == name and node.output[0] not in seen:
                seen.add(node.output[0])
                pending.append(node.output[0])
            elif node.op_type == "MatMul":
                other = node.input[0] if node.input[1] == name else node.input[1]
                source = producer.get(other)
                while source is not None and source.op_type in PASS_THROUGH:
                    other = source.input[0]
                    source = producer.get(other)
                return other
    return None


def _through_copies(tensor: str, producer: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The node that computes ``tensor``, looking through Identity copies."""
    node = producer.get(tensor)
    while node is not None and node.op_type == "Identity":
        node = producer.get(node.input[0])
    return node


def _permuted_from(
    feature: str,
    product: str,
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
) -> list[int]:
    """The perm of the Transpose that made ``feature`` a permuted view of a 4-d tensor, where the gated
    ``product`` is permuted back (permute → gate → multiply → permute back), else []. A feature that is
    only a Transpose's output (NHWC back to NCHW) is a feature in its own right."""
    node = _through_copies(feature, producer)
    if node is None or node.op_type != "Transpose":
        return []
    perm = _perm(node)
    if len(perm) != 4 or perm[0] != 0 or perm == [0, 1, 2, 3]:
        return []
    back = [n for n in consumers.get(product, []) if n.op_type == "Transpose" and _perm(n) == _inverse(perm)]
    return perm if back else []


def _perm(node: onnx.NodeProto) -> list[int]:
    return list(next((a.ints for a in node.attribute if a.name == "perm"), []))


def _inverse(perm: list[int]) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


def _arithmetic_hard_sigmoids(
    graph: onnx.GraphProto, consumers: dict[str, list[onnx.NodeProto]], producer: dict[str, onnx.NodeProto]
) -> list[tuple[str, str, onnx.NodeProto]]:
    """``relu6(x + 3) / 6`` and ``clamp(x + 3, 0, 6) / 6`` (MobileNetV3's h_sigmoid, written out): a Clip
    to [0, 6] of x + 3, divided by 6 or times 1/6. Returns (the scaled output, x, the Clip node)."""
    values = constant_values(graph)

    def scalar(name: str) -> float | None:
        v = values.get(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    found = []
    for clip in (n for n in graph.node if n.op_type == "Clip" and len(n.input) == 3):
        if (scalar(clip.input[1]), scalar(clip.input[2])) != (0.0, 6.0):
            continue
        add = producer.get(clip.input[0])
        if add is None or add.op_type != "Add":
            continue
        shifted = [i for i in add.input if scalar(i) != 3.0]
        if len(shifted) != 1:
            continue
        for node in consumers.get(clip.output[0], []):
            other = scalar(next((i for i in node.input if i != clip.output[0]), ""))
            if other is None:
                continue
            if (node.op_type == "Div" and node.input[0] == clip.output[0] and abs(other - 6) < 1e-6) or (
                node.op_type == "Mul" and abs(other - 1 / 6) < 1e-6
            ):
                found.append((node.output[0], shifted[0], clip))
    return found


def node_scope(node: onnx.NodeProto) -> str:
    """The module path a node came from, relative to the user's model, from either exporter's naming."""
    meta = {p.key: p.value for p in node.metadata_props}
    if "pkg.torch.onnx.name_scopes" in meta:  # torch.export: qualified names, outermost first
        scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
        path = scopes[-2] if len(scopes) >= 2 else ""
    else:  # TorchScript: "/model/layer1/layer1.0/se/fc/fc.3/Sigmoid"
        parts: list[str] = []
        for comp in node.name.split("/")[1:-1]:
            if parts and comp.startswith(parts[-1] + "."):
                parts[-1] = comp
            else:
                parts.append(comp)
        path = ".".join(parts)
    path = re.sub(r"@\d+", "", path)  # torch.export marks repeated calls of one module
    if path == MODEL_ATTR:
        return ""
    return path.removeprefix(MODEL_ATTR + ".")


def classify(gate: tuple[int, ...], feature: tuple[int, ...]) -> str:
    if len(feature) != 4 or not gate or gate[0] != feature[0]:
        return ""
    _, c, h, w = feature
    if len(gate) == 4:  # where its 1s are says which axes it spans, even when H == W or C == H·W
        spans = {
            (c, h, w): FULL,
            (c, 1, 1): CHANNEL,
            (1, h, w): SPATIAL,
            (c, h, 1): AXIS_H,
            (c, 1, w): AXIS_W,
        }
        return spans.get(tuple(gate[1:]), "")
    dims = [d for d in gate[1:] if d != 1]  # flattened gates: N×C, N×1×C, N×H·W, N×C×H·W
    if dims == [c]:  # with C == H·W a flat gate is far more often a channel gate
        return CHANNEL
    if dims in ([h * w], [h, w]):
        return SPATIAL
    if dims in ([c, h * w], [c, h, w]):
        return FULL
    return ""


def promote(proto: onnx.ModelProto, maps: list[PromotedMap]) -> onnx.ModelProto:
    """A copy of ``proto`` with each map as a named graph output."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    canonical: dict[str, str] = {}  # gate tensor → its canonical-shape tensor

    def canonical_of(gate: Gate) -> str:
        if gate.tensor not in canonical:
            name = f"attnserve/{gate.tensor}/canonical"
            shape = numpy_helper.from_array(
                np.array([-1, *_canonical_shape(gate)], np.int64), name + "_shape"
            )
            graph.initializer.append(shape)
            source = gate.tensor
            if gate.permuted:  # as applied (4-d, in the permuted frame), then transposed back
                applied = numpy_helper.from_array(
                    np.array([-1, *gate.applied_shape[1:]], np.int64), name + "_applied_shape"
                )
                graph.initializer.append(applied)
                graph.node.append(
                    helper.make_node("Reshape", [gate.tensor, applied.name], [name + "_applied"])
                )
                source = f"attnserve/{gate.tensor}/unpermuted"
                graph.node.append(
                    helper.make_node("Transpose", [name + "_applied"], [source], perm=_inverse(gate.permuted))
                )
            graph.node.append(helper.make_node("Reshape", [source, shape.name], [name]))
            canonical[gate.tensor] = name
        return canonical[gate.tensor]

    batch = graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    axis = numpy_helper.from_array(np.array([1], np.int64), "attnserve/channel_axis")
    if any(m.derived for m in maps):
        graph.initializer.append(axis)
    for m in maps:
        if m.derived == "axis_product":
            product = f"attnserve/{m.name}/product"
            graph.node.append(helper.make_node("Mul", [canonical_of(g) for g in m.gates], [product]))
            graph.node.append(helper.make_node("ReduceMean", [product, axis.name], [m.name], keepdims=1))
        elif m.derived == "channel_mean":
            graph.node.append(
                helper.make_node("ReduceMean", [canonical_of(m.gates[0]), axis.name], [m.name], keepdims=1)
            )
        else:
            graph.node.append(helper.make_node("Identity", [canonical_of(m.gates[0])], [m.name]))
        graph.output.append(helper.make_tensor_value_info(m.name, TensorProto.FLOAT, [batch, *m.shape[1:]]))
    return out


def _canonical_shape(gate: Gate) -> tuple[int, ...]:
    """The map's shape without the batch: channel C; spatial 1×H×W; full C×H×W; axes C×H×1 / C×1×W."""
    _, c, h, w = gate.feature_shape
    return {
        CHANNEL: (c,),
        SPATIAL: (1, h, w),
        FULL: (c, h, w),
        AXIS_H: (c, h, 1),
        AXIS_W: (c, 1, w),
    }[gate.kind]


def _maps_for(gates: list[Gate]) -> list[PromotedMap]:
    maps: list[PromotedMap] = []
    taken: set[str] = set()

    def name_for(source: str, kind: str) -> str:
        base = f"{source or 'model'}.{kind}"
        name, i = base, 2
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        return name

    for gate in gates:
        maps.append(PromotedMap(name_for(gate.source, gate.kind), gate.kind, gate.source, [gate]))
        if gate.kind == FULL:
            maps.append(
                PromotedMap(name_for(gate.source, SPATIAL), SPATIAL, gate.source, [gate], "channel_mean")
            )
    by_source = defaultdict(dict)
    for gate in gates:
        if gate.kind in (AXIS_H, AXIS_W):
            by_source[gate.source].setdefault(gate.kind, gate)
    for source, pair in by_source.items():
        if len(pair) == 2:
            gates_hw = [pair[AXIS_H], pair[AXIS_W]]
            maps.append(PromotedMap(name_for(source, SPATIAL), SPATIAL, source, gates_hw, "axis_product"))
    for m in maps:
        _, c, h, w = m.gates[0].feature_shape
        m.shape = [1, c] if m.kind == CHANNEL else [1, *_canonical_shape(m.gates[0])]
        if m.derived:
            m.shape = [1, 1, h, w]
    return maps


def _same_gate(node: onnx.NodeProto, tensor: str, constants: set[str]) -> bool:
    """Whether ``node`` only reshapes, offsets (1 + sigmoid) or rescales ``tensor``."""
    others = [i for i in node.input if i != tensor]
    if node.op_type in PASS_THROUGH:
        return node.input[0] == tensor
    return node.op_type in ("Add", "Mul", "Div") and bool(others) and all(o in constants for o in others)


def _gate_values(
    outputs: list[str], consumers: dict[str, list[onnx.NodeProto]], constants: set[str]
) -> set[str]:
    """Every tensor that is a gate op's output, reshaped, offset or rescaled."""
    seen, stack = set(outputs), list(outputs)
    while stack:
        tensor = stack.pop()
        for node in consumers.get(tensor, []):
            if _same_gate(node, tensor, constants) and node.output[0] not in seen:
                seen.add(node.output[0])
                stack.append(node.output[0])
    return seen


def _gating_product(
    tensor: str,
    consumers: dict[str, list[onnx.NodeProto]],
    constants: set[str],
    gated: set[str],
    depth: int = 0,
) -> tuple[onnx.NodeProto, str] | None:
    """(the Mul node, the feature it multiplies) where ``tensor`` ends up gating a feature, else None.
    A product of two gates (``x * (a_h * a_w)``) is followed to the feature it multiplies."""
    if depth > 8:
        return None
    for node in consumers.get(tensor, []):
        others = [i for i in node.input if i != tensor]
        gate_product = node.op_type == "Mul" and len(others) == 1 and others[0] in gated
        if _same_gate(node, tensor, constants) or gate_product:
            found = _gating_product(node.output[0], consumers, constants, gated, depth + 1)
        elif node.op_type == "Mul" and len(others) == 1 and others[0] not in constants:
            found = (node, others[0])
        else:
            found = None
        if found is not None:
            return found
    return None


def _descendants(tensor: str, consumers: dict[str, list[onnx.NodeProto]]) -> set[str]:
    seen, stack = set(), [tensor]
    while stack:
        for node in consumers.get(stack.pop(), []):
            for out in node.output:
                if out not in seen:
                    seen.add(out)
                    stack.append(out)
    return seen


def probe(proto: onnx.ModelProto, sample: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
    """The values of intermediate ``tensors`` on ``sample``, by running the graph with them as outputs."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    present = {o.name for o in probe.graph.output}
    wanted = list(dict.fromkeys(tensors))
    for name in wanted:
        if name not in present:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = cpu_session(probe)
    return dict(zip(wanted, session.run(wanted, {INPUT_NAME: sample}), strict=True))


def cpu_session(proto: onnx.ModelProto, optimized: bool = True) -> ort.InferenceSession:
    """Without ``optimized``, ONNX Runtime runs every node as written: no fusions, and a QDQ graph's
    quantised layers in float between DequantizeLinear and QuantizeLinear, not as integer kernels."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: intermediate outputs make ORT warn about each one
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def match_record(value: np.ndarray, scope: str, records: list[GateRecord]) -> int:
    best, best_diff = -1, MATCH_TOLERANCE
    flat = value.reshape(-1)
    for i, record in enumerate(records):
        if record.scope != scope or record.value.numel() != flat.size:
            continue
        diff = float(np.abs(record.value.float().numpy().reshape(-1) - flat).max())
        if diff <= best_diff:
            best, best_diff = i, diff
    return best
