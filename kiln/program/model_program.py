"""`kiln.ModelProgram`: what a user declares about a model, with a default for every part.

A bare `ModelProgram()` describes `model.onnx` with synthetic inputs, agreement with onnxruntime as the
metric, and the generic tensor protocol. Subclass it in `program.py` and override what you need.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from kiln.program.datasets import Dataset
from kiln.program.metrics import Metric, default_metrics


class ModelProgram:
    """Base class of a model program. Class attributes are the declaration; methods are the mapping code."""

    #: a short name for the store (letters, digits, -_.); default: the program folder's name
    name: ClassVar[str | None] = None
    #: the ONNX file, relative to the program folder (external data files beside it are picked up)
    model: ClassVar[str] = "model.onnx"
    #: concrete shapes for inputs with dynamic dimensions, e.g. {"pixels": [1, 64]}
    shapes: ClassVar[dict[str, list[int]]] = {}
    #: ranges of dynamic dimensions, by the model's dimension names or "input:axis", e.g.
    #: {"sequence_length": (1, 128), "batch_size": (1, 8)}; undeclared ones take the range the dataset shows
    #: (a batch dimension: 1)
    dims: ClassVar[dict[str, tuple[int, int]]] = {}
    #: how to pad each input when a server batches requests of unequal length, e.g.
    #: {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}: name the mask, so padded positions are inert;
    #: empty = only requests of equal shapes share a batch
    padding: ClassVar[dict[str, float]] = {}
    #: the CPUs the artifact will run on (`kiln targets`: host, x86-64-v3, znver3, c6i, ...); the request's
    #: --target replaces them; empty = host
    targets: ClassVar[list[str]] = []
    #: evaluation data; None = synthetic inputs from the declared shapes
    dataset: ClassVar[Dataset | None] = None
    #: how many synthetic feeds to make when there is no dataset
    synthetic_samples: ClassVar[int] = 8
    #: data to calibrate int8 quantization on; None = split `calibration_fraction` off the dataset
    calibration: ClassVar[Dataset | None] = None
    calibration_fraction: ClassVar[float] = 0.2
    #: how static int8 picks its ranges: "minmax", "entropy" or "percentile"
    calibration_method: ClassVar[str] = "minmax"
    #: accuracy-aware int8: when a quantized candidate misses a range on the calibration split, keep the nodes
    #: that add the most error in fp32 and retry, up to this many rounds (0: off) and this many seconds
    max_fallback_rounds: ClassVar[int] = 4
    fallback_seconds: ClassVar[float] = 900.0
    #: the calibration split is smaller than the evaluation split, so its worst sample is milder: it must keep
    #: this fraction of the headroom between the reference's own score and each bound (0: just pass)
    fallback_margin: ClassVar[float] = 0.5
    #: the transformer family for onnxruntime's fusions ("bert", "gpt2", "t5", ...); None: detected from the
    #: graph; "none": no fusion candidates
    transformer: ClassVar[str | None] = None
    #: calibrate on synthetic inputs when there is no dataset (off: static int8 is skipped instead)
    calibrate_on_synthetic: ClassVar[bool] = False
    #: accept NaN and Inf in float inputs (the data, and requests when serving) and in the reference's outputs
    #: while optimizing, where equal NaN/Inf on both sides count as agreement (default: refused, naming the
    #: input or output and the sample)
    allow_nonfinite: ClassVar[bool] = False
    #: metrics with acceptable ranges; empty = agreement with the onnxruntime reference
    metrics: ClassVar[list[Metric]] = []
    #: what the mapping code imports beyond kiln's runtime, as pip requirements (e.g. ["tokenizers==0.21.1"]):
    #: the model's image installs them (wheels fetched on the host for the image's Python, installed offline)
    requirements: ClassVar[list[str]] = []
    #: the .proto file and its request/response message names; None = generic tensor protocol
    proto: ClassVar[str | None] = None
    request: ClassVar[str | None] = None
    response: ClassVar[str | None] = None

    def get_metrics(self) -> list[Metric]:
        return list(self.metrics) or default_metrics()

    def to_model_inputs(self, request: Any) -> dict[str, np.ndarray]:
        """Map a request message to model inputs. Default: the request already is {name: array}."""
        if isinstance(request, dict):
            return {k: np.asarray(v) for k, v in request.items()}
        raise NotImplementedError(f"{type(self).__name__}.to_model_inputs must map {type(request).__name__}")

    def from_model_outputs(self, outputs: dict[str, np.ndarray], response_type: Any = None) -> Any:
        """Map model outputs to a response message. Default: the outputs themselves."""
        return outputs
