"""Find self-attention in an exported ONNX graph and promote its maps to named outputs.

A self-attention layer is a Softmax whose result, possibly reshaped or transposed, is multiplied into the
values (``MatMul``/``Einsum``: ``softmax(q kᵀ) v``) and whose two token axes have one length T. Its
layout is read from its shape and softmax axis, whatever order the code put the heads in:
N×heads×T×T and N×T×heads×T (hand-written, or ``F.scaled_dot_product_attention`` written out by
export.capture), or (N·heads)×T×T (``nn.MultiheadAttention``, ``rearrange('b h ...-> (b h) ...')``).

The patch grid comes from T and the input size: T = k leading tokens (class, distillation, registers)
+ Gh×Gw patches with Gh:Gw the input's aspect. A map is emitted only when exactly one k ≤
``MAX_LEADING_TOKENS`` fits; otherwise the layer is reported and left out. Per layer the exporter adds
``{module}.self_attention``: the first token's row of the head-averaged probabilities over the patches
(with no leading token, the mean of every row), N×1×Gh×Gw, and ``{module}.self_attention_heads``, the
same row of each head, N×heads×Gh×Gw. Over every layer of one token layout it adds
``rollout`` (Abnar & Zuidema 2020, computed as models.vit.rollout does). Every map is checked against
the probabilities PyTorch computed in the same module (export.capture); one without a match is left
out, never emitted unverified.
"""

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from attnserve.export.capture import GateRecord
from attnserve.export.discovery import PASS_THROUGH, match_record, node_scope, probe
from attnserve.export.graph import GraphWriter
from attnserve.models.outputs import ROLLOUT, SELF_ATTENTION, SELF_ATTENTION_HEADS
from attnserve.models.vit import rollout

MAX_LEADING_TOKENS = 8  # a class token, a distillation token and up to six registers
ATTENDING_OPS = {"MatMul", "Einsum"}
FUSED_ATTENTION_OPS = {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention"}


@dataclass
class AttentionLayer:
    tensor: str  # the Softmax output
    source: str  # the module it ran in
    order: tuple[int, ...] = ()  # transpose of the probabilities to batch(·heads), heads, query, key
    heads: int = 0
    tokens: int = 0
    leading: int = 0  # tokens before the patches
    grid: tuple[int, int] = (0, 0)
    record: int = -1  # index of the matching PyTorch GateRecord

    def per_head(self, records: list[GateRecord]) -> torch.Tensor:
        """PyTorch's probabilities in the graph's canonical layout: N×heads×T×T."""
        value = records[self.record].value.float()
        if self.order:
            value = value.permute(*self.order)
        return value.reshape(-1, self.heads, self.tokens, self.tokens)


@dataclass
class AttentionMap:
    name: str
    kind: str  # SELF_ATTENTION or SELF_ATTENTION_HEADS (one layer), or ROLLOUT (every layer)
    source: str
    layers: list[AttentionLayer]
    shape: list[int] = field(default_factory=list)  # at batch 1

    def expected(self, records: list[GateRecord]) -> np.ndarray:
        """The same map computed from PyTorch's recorded probabilities."""
        first = self.layers[0]
        per_head = [layer.per_head(records) for layer in self.layers]
        if self.kind == ROLLOUT:
            row = rollout([a.mean(dim=1) for a in per_head], first.leading)
        else:
            a = per_head[0] if self.kind == SELF_ATTENTION_HEADS else per_head[0].mean(dim=1, keepdim=True)
            row = (a[:, :, 0] if first.leading else a.mean(dim=2))[..., first.leading :]
        return row.reshape(-1, self.shape[1], *first.grid).numpy()


def discover_self_attention(
    proto: onnx.ModelProto, sample: np.ndarray, records: list[GateRecord], input_size: tuple[int, int]
) -> tuple[list[AttentionMap], list[str]]:
    """The self-attention maps to promote, and a line for each layer found but left out (and why)."""
    graph = proto.graph
    skipped = [
        f"{n.name or n.op_type} in {node_scope(n) or 'the top-level module'}: a fused {n.op_type} op keeps "
        "its probabilities inside; export at opset 18–22 or write the softmax out"
        for n in graph.node
        if n.op_type in FUSED_ATTENTION_OPS
    ]
    softmaxes = _attending_softmaxes(graph)
    if not softmaxes:
        return [], skipped
    values = probe(proto, sample, [n.output[0] for n in softmaxes])
    layers = []
    for node in softmaxes:
        layer = AttentionLayer(node.output[0], node_scope(node))
        where = f"{layer.tensor} in {layer.source or 'the top-level module'}"
        value = values[layer.tensor]
        reason = _read_layout(layer, value.shape, _softmax_axis(node, value.ndim), len(sample))
        reason = reason or _read_grid(layer, input_size)
        if not reason:
            layer.record = match_record(value, layer.source, records)
            reason = "" if layer.record >= 0 else "no PyTorch attention in that module has the same values"
        if reason:
            skipped.append(f"{where}: {reason}")
        else:
            layers.append(layer)
    return _maps_for(layers), skipped


def promote_self_attention(proto: onnx.ModelProto, maps: list[AttentionMap]) -> onnx.ModelProto:
    """A copy of ``proto`` with each map as a named graph output."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = GraphWriter(out.graph, "attnserve/self_attention")
    canonical: dict[str, str] = {}  # layer tensor → its N×heads×T×T
    mean: dict[str, str] = {}  # layer tensor → its head-averaged N×T×T

    def canonical_of(layer: AttentionLayer) -> str:
        if layer.tensor not in canonical:
            base, tensor = f"attnserve/{layer.tensor}", layer.tensor
            if layer.order:
                tensor = graph.add("Transpose", [tensor], base + "/ordered", perm=layer.order)
            shape = graph.ints(-1, layer.heads, layer.tokens, layer.tokens)
            canonical[layer.tensor] = graph.add("Reshape", [tensor, shape], base + "/canonical")
        return canonical[layer.tensor]

    def mean_of(layer: AttentionLayer) -> str:
        if layer.tensor not in mean:
            mean[layer.tensor] = graph.add(
                "ReduceMean",
                [canonical_of(layer), graph.ints(1)],
                f"attnserve/{layer.tensor}/mean",
                keepdims=0,
            )
        return mean[layer.tensor]

    def first_row(attention: str, leading: int, name: str, axis: int = 1) -> str:
        """…×1×T: the first token's row (the query ``axis``), or the mean row without leading tokens."""
        if leading:
            return graph.add("Slice", [attention, graph.ints(0), graph.ints(1), graph.ints(axis)], name)
        return graph.add("ReduceMean", [attention, graph.ints(axis)], name, keepdims=1)

    batch = out.graph.input[0].type.tensor_type.shape.dim[0].dim_param or "batch"
    for m in maps:
        first = m.layers[0]
        base = f"attnserve/{m.name}"
        if m.kind == ROLLOUT:
            eye = graph.constant(np.eye(first.tokens, dtype=np.float32))
            row = None
            for i, layer in enumerate(reversed(m.layers)):  # r = row(Â_L), then r Â_(L-1) … Â_1
                step = f"{base}/{i}"
                # Â = ½A + ½I with rows renormalised: the ½ cancels in the division
                mixed = graph.add("Add", [mean_of(layer), eye], step + "/mixed")
                total = graph.add("ReduceSum", [mixed, graph.ints(-1)], step + "/sum", keepdims=1)
                normalised = graph.add("Div", [mixed, total], step + "/normalised")
                if row is None:
                    row = first_row(normalised, first.leading, step + "/row")
                else:
                    row = graph.add("MatMul", [row, normalised], step + "/row")
        elif m.kind == SELF_ATTENTION_HEADS:
            row = first_row(canonical_of(first), first.leading, base + "/row", axis=2)  # N×heads×1×T
        else:
            row = first_row(mean_of(first), first.leading, base + "/row")
        bounds = [graph.ints(first.leading), graph.ints(first.tokens), graph.ints(-1)]
        patches = graph.add("Slice", [row, *bounds], base + "/patches")
        planes = m.shape[1]  # 1, or one per head
        graph.add("Reshape", [patches, graph.ints(-1, planes, *first.grid)], m.name)
        out.graph.output.append(
            helper.make_tensor_value_info(m.name, TensorProto.FLOAT, [batch, planes, *first.grid])
        )
    return out


def _attending_softmaxes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Softmax nodes whose output, through reshapes and transposes, is multiplied into the values."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def attends(tensor: str, depth: int = 0) -> bool:
        for node in consumers.get(tensor, []):
            if node.op_type in ATTENDING_OPS and node.input[0] == tensor:
                return True
            if (
                depth < 6
                and node.op_type in PASS_THROUGH | {"Dropout"}
                and attends(node.output[0], depth + 1)
            ):
                return True
        return False

    return [n for n in graph.node if n.op_type == "Softmax" and attends(n.output[0])]


def _softmax_axis(node: onnx.NodeProto, rank: int) -> int:
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    return axis % rank


def _read_layout(layer: AttentionLayer, shape: tuple[int, ...], key: int, batch: int) -> str:
    """Fills the layer's order, heads and tokens from its probabilities' shape; returns why not, or ""."""
    tokens = shape[key]
    if key == 0:
        return f"probabilities {shape}: the softmax runs over the batch axis"
    queries = [a for a in range(1, len(shape)) if a != key and shape[a] == tokens]
    if len(shape) == 3 and queries and shape[0] % batch == 0:
        layer.order, layer.heads = (0, queries[0], key), shape[0] // batch
    elif len(shape) == 4 and shape[0] == batch and len(queries) == 1:
        (heads,) = {1, 2, 3} - {key, queries[0]}
        layer.order, layer.heads = (0, heads, queries[0], key), shape[heads]
    elif len(shape) == 4 and shape[0] == batch and len(queries) == 2:
        return f"probabilities {shape}: the heads axis and the token axes are all {tokens} long"
    else:
        what = "cross-attention (queries and keys differ in number)" if not queries else "no known layout"
        return f"probabilities {shape} (softmax over axis {key}, batch {batch}): {what}"
    if layer.order == tuple(range(len(shape))):  # already canonical once reshaped
        layer.order = ()
    layer.tokens = tokens
    return ""


def _read_grid(layer: AttentionLayer, input_size: tuple[int, int]) -> str:
    """Fills the layer's leading tokens and patch grid; returns why not, or ""."""
    height, width = input_size
    fits = []
    for leading in range(min(MAX_LEADING_TOKENS, layer.tokens - 4) + 1):
        patches = layer.tokens - leading
        for gh in range(2, patches // 2 + 1):
            if patches % gh == 0 and gh * width == (patches // gh) * height:
                fits.append((leading, (gh, patches // gh)))
    if len(fits) != 1:
        layouts = " or ".join(f"{k} leading tokens + {g[0]}×{g[1]} patches" for k, g in fits)
        why = f"could be {layouts}" if fits else "fit no patch grid of that aspect"
        return f"{layer.tokens} tokens on a {height}×{width} input {why}"
    layer.leading, layer.grid = fits[0]
    return ""


def _maps_for(layers: list[AttentionLayer]) -> list[AttentionMap]:
    maps, taken = [], set()
    for layer in layers:
        base, i = layer.source or "model", 2
        while base in taken:  # two softmaxes in one module
            base, i = f"{layer.source or 'model'}_{i}", i + 1
        taken.add(base)
        maps.append(
            AttentionMap(
                f"{base}.{SELF_ATTENTION}", SELF_ATTENTION, layer.source, [layer], [1, 1, *layer.grid]
            )
        )
        heads = [1, layer.heads, *layer.grid]
        maps.append(
            AttentionMap(f"{base}.{SELF_ATTENTION_HEADS}", SELF_ATTENTION_HEADS, layer.source, [layer], heads)
        )
    # rollout multiplies layers of one token sequence: the layout most layers share, in graph order
    layouts = [(layer.tokens, layer.leading, layer.grid) for layer in layers]
    if layouts:
        common = max(set(layouts), key=layouts.count)
        chain = [layer for layer, layout in zip(layers, layouts, strict=True) if layout == common]
        maps.append(AttentionMap(ROLLOUT, ROLLOUT, _common_source(chain), chain, [1, 1, *chain[0].grid]))
    return maps


def _common_source(layers: list[AttentionLayer]) -> str:
    """The innermost module that holds every layer (``blocks`` for ``blocks.0.attn`` … ``blocks.3.attn``)."""
    parts = [layer.source.split(".") for layer in layers]
    common = []
    for names in zip(*parts, strict=False):
        if len(set(names)) > 1:
            break
        common.append(names[0])
    return ".".join(common)
