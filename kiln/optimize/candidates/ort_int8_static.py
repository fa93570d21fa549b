"""`ort-int8-static`: QDQ, uint8 activations + per-channel weights, calibrated on the program's calibration
split; the weights are int8 (U8S8) where the CPU's int8 dot products are exact, uint8 (U8U8) where they
saturate (kiln.cpu). Measured on these machines: ResNet-18 0.33x and a 4-layer encoder
0.61x of fp32 latency; int8 activations (S8S8) were slower. QDQ models run 4.6x slower under graph level BASIC
than EXTENDED/ALL, so the candidate runs with ALL.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import onnx

from kiln.artifact.manifest import RunSettings
from kiln.errors import KilnError
from kiln.optimize.candidates.base import BuildContext, Built
from kiln.optimize.quantize.accuracy_aware import COMPUTE_OPS, ComputeOnly, quantize_with_fallback

METHODS = ("minmax", "entropy", "percentile")


def quantize_qdq(ctx: BuildContext, source: Path, dest: Path, exclude: list[str],
                 op_types: list[str] | None = None, ranges: Path | None = None) -> None:
    """QDQ per-channel of `source` into `dest` in the context's int8 scheme, calibrated on its feeds.

    ranges: a folder where the calibrated ranges of `source` are kept (one file per set of operator types) and
    read back by later calls: accuracy-aware retries and their ranking quantize the same model tens of times
    with different nodes excluded, and excluding a node does not change any tensor's range."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not ctx.calibration:
        raise KilnError("no calibration data: the program has no dataset",
                        hint="give the program a dataset (a calibration split is taken from it)")
    if ctx.calibration_method not in METHODS:
        raise KilnError(f"unknown calibration method {ctx.calibration_method!r}",
                        hint=f"set calibration_method in program.py to one of {list(METHODS)}")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[ctx.calibration_method]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(ctx.calibration))

        def __len__(self):
            return len(ctx.calibration)

        def set_range(self, start_index: int, end_index: int):
            self.feeds = iter(ctx.calibration[start_index:end_index])

        def get_next(self):
            return next(self.feeds, None)

    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if method != CalibrationMethod.MinMax:
        # the histogram calibrators stack each tensor's values over all feeds at once (np.asarray), which fails
        # on feeds of different shapes (text lines of different widths); fed one at a time, they merge the
        # histograms instead
        options["CalibStridedMinMax"] = 1
    with contextlib.redirect_stdout(io.StringIO()):  # the histogram collector prints a line per feed
        quantize_static(str(source), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType[ctx.int8.quant_type],
                        calibrate_method=method, nodes_to_exclude=exclude, op_types_to_quantize=op_types,
                        extra_options=options, calibration_cache_path=ranges and ranges / (
                            f"{source.stem}-{'-'.join(op_types or ['all'])}-{ctx.calibration_method}.json"))


def ranges_folder(ctx: BuildContext) -> Path:
    """An empty folder for this build's calibrated ranges (quantize_qdq's `ranges`): none left from a build
    before, whose model or data may have differed."""
    folder = ctx.out_dir / "calibrated_ranges"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


QDQ_OPSET = 13  # per-channel DequantizeLinear (its axis attribute) needs opset 13


def at_least_opset(model: onnx.ModelProto, version: int = QDQ_OPSET) -> onnx.ModelProto:
    """The model converted up to `version` of the default domain when older (tf2onnx exports are often at 9:
    quantizing a real ResNet-50 at opset 9 gave an invalid graph)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), version)
    if current >= version:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, version)
    except Exception as exc:
        raise KilnError(f"cannot convert the model from opset {current} to {version} for QDQ int8: "
                        f"{type(exc).__name__}: {str(exc)[:200]}") from None


def build(ctx: BuildContext) -> Built:
    from kiln.optimize.candidates.ort_int8_dynamic import named_nodes

    source = ctx.out_dir / "fp32_named.onnx"
    onnx.save(named_nodes(at_least_opset(onnx.load(str(ctx.prepared)))), str(source))
    settings = RunSettings(optimization="all", int8_isa=ctx.int8.isa,
                           quantization=f"int8 static QDQ {ctx.int8.label} ({ctx.calibration_method})",
                           calibration_feeds=len(ctx.calibration or []))
    # QDQ quantizes most operators' outputs, not only MatMul/Gemm/Conv: any node may be the one to keep; the
    # first retry quantizes the compute operators only
    ranges = ranges_folder(ctx)
    return quantize_with_fallback(
        ctx, source, lambda dest, exclude: quantize_qdq(ctx, source, dest, exclude, ranges=ranges), settings, None,
        ComputeOnly(lambda dest, exclude: quantize_qdq(ctx, source, dest, exclude, COMPUTE_OPS, ranges),
                    COMPUTE_OPS))

