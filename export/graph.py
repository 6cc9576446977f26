"""Appending nodes to an exported ONNX graph: the maps and post-processing the exporter adds."""

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphWriter:
    """Appends nodes and constants (each distinct constant once, under ``prefix``) to a graph."""

    def __init__(self, graph: onnx.GraphProto, prefix: str) -> None:
        self.graph = graph
        self.prefix = prefix
        self.constants: dict[tuple, str] = {}

    def add(self, op: str, inputs: list[str], output: str | list[str], **attributes) -> str | list[str]:
        """The node's output name (its list, when ``output`` is a list)."""
        outputs = output if isinstance(output, list) else [output]
        self.graph.node.append(helper.make_node(op, inputs, outputs, **attributes))
        return output

    def constant(self, value: np.ndarray) -> str:
        key = (value.dtype.str, value.shape, value.tobytes())
        if key not in self.constants:
            name = f"{self.prefix}/constant{len(self.constants)}"
            self.graph.initializer.append(numpy_helper.from_array(value, name))
            self.constants[key] = name
        return self.constants[key]

    def ints(self, *values: int) -> str:
        return self.constant(np.array(values, np.int64))


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Every initializer's and Constant node's value, by tensor name."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            attr = next((a for a in node.attribute if a.name == "value"), None)
            if attr is not None:
                values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values
