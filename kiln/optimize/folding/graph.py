"""An ONNX graph indexed for local rewrites: who produces and who reads each tensor, which tensors are
constants. Passes mark nodes dead and add initializers; `model()` writes the result back once."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class Graph:
    def __init__(self, model: onnx.ModelProto):
        self._model = model
        self.nodes = list(model.graph.node)
        self.dead: set[int] = set()
        self.outputs = {o.name for o in model.graph.output}
        self._inits = {i.name: i for i in model.graph.initializer}
        # an initializer also listed as a graph input is a default the caller may override: not a constant
        self._overridable = {i.name for i in model.graph.input}
        self._consts = {n.output[0]: n for n in self.nodes if n.op_type == "Constant" and len(n.output) == 1}
        self.reindex()

    def reindex(self) -> None:
        """Recompute who reads and who produces each tensor (after a pass rewired nodes)."""
        self._readers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self._producers = {name: node for node in self.live() for name in node.output}
        for node in self.live():
            for name in node.input:
                self._readers[name].append(node)
            for sub in _subgraph_inputs(node):  # a tensor an If/Loop body reads is read by that node
                self._readers[sub].append(node)

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._producers.get(name)

    def live(self) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if id(n) not in self.dead]

    def readers(self, name: str) -> list[onnx.NodeProto]:
        return self._readers.get(name, [])

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        """The one node reading `name`, when it is neither read elsewhere nor a graph output."""
        readers = self.readers(name)
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def constant(self, name: str) -> np.ndarray | None:
        if name in self._overridable:
            return None
        if name in self._inits:
            return numpy_helper.to_array(self._inits[name])
        node = self._consts.get(name)
        if node is not None and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def add_constant(self, hint: str, value: np.ndarray) -> str:
        """A new float32 initializer named after `hint`, made unique."""
        name = hint
        while name in self._inits:
            name += "_"
        self._inits[name] = numpy_helper.from_array(np.asarray(value, np.float32), name)
        return name

    def remove(self, *nodes: onnx.NodeProto) -> None:
        self.dead.update(id(n) for n in nodes)

    def opset(self) -> int:
        return next((o.version for o in self._model.opset_import if o.domain in ("", "ai.onnx")), 1)

    def model(self) -> onnx.ModelProto:
        """The rewritten model: live nodes, and only the initializers something still reads."""
        graph = self._model.graph
        live = self.live()
        used = {name for n in live for name in (*n.input, *_subgraph_inputs(n))} | self.outputs
        del graph.node[:]
        graph.node.extend(live)
        del graph.initializer[:]
        graph.initializer.extend(v for k, v in self._inits.items() if k in used)
        return self._model


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for inner in sub.node:
                names.update(inner.input)
                names.update(_subgraph_inputs(inner))
    return names
