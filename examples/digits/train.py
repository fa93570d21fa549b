"""Train a small MLP on digits.npz deterministically (numpy only) and export it to model.onnx.

    python examples/digits/train.py [--out model.onnx]

The network is pixels(0..16) -> /16 -> Dense(32) -> ReLU -> Dense(10) -> Softmax. The batch dimension is
left dynamic ("batch") on purpose: the program declares the concrete shape kiln compiles for.
"""

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).parent


def train(x: np.ndarray, y: np.ndarray, hidden: int = 32, epochs: int = 400, lr: float = 0.01):
    rng = np.random.default_rng(0)
    x = x / 16.0
    w1 = rng.normal(0, np.sqrt(2 / 64), (64, hidden)).astype(np.float32)
    b1 = np.zeros(hidden, np.float32)
    w2 = rng.normal(0, np.sqrt(2 / hidden), (hidden, 10)).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    params = [w1, b1, w2, b2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    onehot = np.eye(10, dtype=np.float32)[y]
    for step in range(1, epochs + 1):
        h = np.maximum(x @ w1 + b1, 0)
        logits = h @ w2 + b2
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d_logits = (p - onehot) / len(x)
        d_h = (d_logits @ w2.T) * (h > 0)
        grads = [x.T @ d_h, d_h.sum(0), h.T @ d_logits, d_logits.sum(0)]
        for i, g in enumerate(grads):  # Adam
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] -= lr * (m[i] / (1 - 0.9**step)) / (np.sqrt(v[i] / (1 - 0.999**step)) + 1e-8)
    return [p.astype(np.float32) for p in params]


def export(params, out: Path) -> None:
    w1, b1, w2, b2 = params
    inits = [
        numpy_helper.from_array(np.array([1 / 16.0], np.float32), "scale"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(b2, "b2"),
    ]
    nodes = [
        helper.make_node("Mul", ["pixels", "scale"], ["scaled"], name="scale"),
        helper.make_node("Gemm", ["scaled", "w1", "b1"], ["h_pre"], name="dense1"),
        helper.make_node("Relu", ["h_pre"], ["h"], name="relu1"),
        helper.make_node("Gemm", ["h", "w2", "b2"], ["logits"], name="dense2"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-digits")
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE / "model.onnx")
    args = parser.parse_args()
    data = np.load(HERE / "digits.npz")
    params = train(data["x_train"], data["y_train"])
    export(params, args.out)
    w1, b1, w2, b2 = params
    h = np.maximum(data["x_test"] / 16.0 @ w1 + b1, 0)
    acc = float(((h @ w2 + b2).argmax(1) == data["y_test"]).mean())
    print(f"wrote {args.out}; test top-1 accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
