"""Handwritten digits (scikit-learn's 8x8 set): a small MLP classifier with a real test split.

Run `python examples/digits/train.py` once to create model.onnx, then `kiln optimize examples/digits`.
The ranges here are about classification, so int8 candidates may ship if they keep them;
program_strict.py holds the probabilities themselves to 1e-3, which int8 cannot meet.
"""

import numpy as np

import kiln
from kiln import metrics


class Digits(kiln.ModelProgram):
    name = "digits"
    model = "model.onnx"
    shapes = {"pixels": [1, 64]}  # the export leaves the batch dynamic; serve one image per call
    dataset = kiln.Dataset(path="digits.npz", inputs={"pixels": "x_test"}, labels="y_test")
    metrics = [
        metrics.top1(at_least=0.95),                 # absolute: the model must stay a good classifier
        metrics.top1(max_degradation=0.005, name="top1_vs_reference"),  # and lose at most 0.5 % of its accuracy
        metrics.agreement(at_least=0.99),            # same predicted digit as onnxruntime
    ]
    proto = "digits.proto"
    request = "DigitsRequest"
    response = "DigitsResponse"

    def to_model_inputs(self, request) -> dict[str, np.ndarray]:
        pixels = np.asarray(request.pixels, dtype=np.float32)
        return {"pixels": pixels.reshape(1, 64)}

    def from_model_outputs(self, outputs, response_type=None):
        probs = outputs["probabilities"][0]
        if response_type is None:
            return {"label": int(probs.argmax()), "probabilities": probs.tolist()}
        return response_type(label=int(probs.argmax()), probabilities=probs.tolist())
