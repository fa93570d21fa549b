"""Write a ResNet-18 (ImageNet layout, 1000 classes) with random weights to model.onnx.

    python examples/resnet18/make_model.py [--out model.onnx] [--depth 34]

--depth 34 writes a ResNet-34: the same convolution shapes, more blocks per stage (a model that shares every
workload with ResNet-18, for the shared tuning database's benchmark).

Weights are random (He init, seed 0): the point is the shape of the computation, for benchmarks. The batch
dimension is dynamic, as in a torch.onnx.export; program.py declares 1x3x224x224.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self):
        self.nodes, self.inits, self.rng, self.n = [], [], np.random.default_rng(0), 0

    def name(self, prefix):
        self.n += 1
        return f"{prefix}{self.n}"

    def conv(self, x, cin, cout, k, stride, relu=True):
        w = self.name("w")
        b = self.name("b")
        std = np.sqrt(2.0 / (cin * k * k))
        weights = (self.rng.standard_normal((cout, cin, k, k)) * std).astype(np.float32)
        self.inits += [numpy_helper.from_array(weights, w),
                       numpy_helper.from_array(np.zeros(cout, np.float32), b)]  # batch norm folded in
        y = self.name("conv")
        self.nodes.append(helper.make_node("Conv", [x, w, b], [y], name=y, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[k // 2] * 4))
        if relu:
            r = self.name("relu")
            self.nodes.append(helper.make_node("Relu", [y], [r], name=r))
            return r
        return y

    def block(self, x, cin, cout, stride):
        y = self.conv(x, cin, cout, 3, stride)
        y = self.conv(y, cout, cout, 3, 1, relu=False)
        short = self.conv(x, cin, cout, 1, stride, relu=False) if (stride != 1 or cin != cout) else x
        s = self.name("add")
        self.nodes.append(helper.make_node("Add", [y, short], [s], name=s))
        r = self.name("relu")
        self.nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r


BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def build(depth: int = 18) -> onnx.ModelProto:
    b = Builder()
    x = b.conv("input", 3, 64, 7, 2)
    b.nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="maxpool", kernel_shape=[3, 3], strides=[2, 2],
                                    pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for (cout, stride), blocks in zip([(64, 1), (128, 2), (256, 2), (512, 2)], BLOCKS[depth], strict=True):
        x = b.block(x, cin, cout, stride)
        for _ in range(blocks - 1):
            x = b.block(x, cout, cout, 1)
        cin = cout
    b.nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
                helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
                helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    b.inits += [numpy_helper.from_array((b.rng.standard_normal((1000, 512)) * 0.04).astype(np.float32), "fc_w"),
                numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
    graph = helper.make_graph(b.nodes, f"resnet{depth}",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1000])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-example")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("model.onnx"))
    parser.add_argument("--depth", type=int, choices=sorted(BLOCKS), default=18)
    args = parser.parse_args()
    onnx.save(build(args.depth), str(args.out))
    # a sample request for `kiln client` (generic tensor protocol), random but reproducible
    sample = np.random.default_rng(1).standard_normal([1, 3, 224, 224]).astype(np.float32).round(3)
    args.out.with_name("request.json").write_text(json.dumps({"inputs": {"input": sample.tolist()}}))
    print(f"wrote {args.out} and {args.out.with_name('request.json')}")


if __name__ == "__main__":
    main()
