"""Candidates as named data, like TVM's named pipelines: what each is, which stage builds it, which function.

The flow builds the requested ones, evaluates each exactly like the baseline, and the gate picks among them.
The baseline's name, the set of candidates and the default set are defined here and nowhere else. Builders are
imported by name when they build (Candidate.build), so this list costs no onnx or onnxruntime import.
"""

from kiln.artifact.manifest import BASELINE
from kiln.errors import KilnError
from kiln.optimize.candidates.base import (
    REGISTRY,
    BuildContext,
    Built,
    Candidate,
    Skipped,
    Stage,
    get,
    names,
    register,
)

_C = "kiln.optimize.candidates"

register(
    # the reference: its outputs define agreement, its latency every speed-up, and it is always built
    Candidate(name=BASELINE, backend="onnxruntime", stage="baseline", builder=f"{_C}.ort_fp32:build_baseline",
              description="the unchanged model in onnxruntime (graph optimization all): the reference"),
    # built by their own stage (kiln.optimize.compile): tuning takes minutes to hours and is cached by content.
    # Both tune into the same database, so the kernels they share are tuned once; tvm-fast-math approximates
    # exp/erf/tanh/softmax and is skipped on models without them
    Candidate(name="tvm", backend="tvm", stage="compile",
              description="TVM: Relax import, MetaSchedule tuning within the trial budget, one model.so"),
    Candidate(name="tvm-fast-math", backend="tvm", stage="compile", graph_passes=("fast-math",),
              description="TVM with fast approximations of exp, erf, tanh and softmax (GELU, attention), "
                          "judged by the metric ranges"),
    # kiln's own int8 compiler: the quantized model an onnxruntime int8 candidate built, its quantized matmuls
    # lowered to integer Relax (kiln.compiler.int8.qdq) and tensorized with the CPU's int8 dot instruction
    Candidate(name="tvm-int8-dynamic", backend="tvm", stage="compile", quantized_from="ort-int8-dynamic",
              description="TVM int8: ort-int8-dynamic's quantization as integer kernels on the CPU's int8 dot "
                          "instructions (VNNI, AVX-512, AVX2), tuned"),
    Candidate(name="tvm-int8-static", backend="tvm", stage="compile", quantized_from="ort-int8-static",
              needs_calibration=True,
              description="TVM int8: ort-int8-static's calibrated QDQ model as integer kernels, requantization "
                          "in the epilogue, tuned"),
    Candidate(name="tvm-int8-smooth", backend="tvm", stage="compile", quantized_from="ort-int8-smooth",
              needs_calibration=True,
              description="TVM int8: ort-int8-smooth's SmoothQuant per-channel dynamic int8 as integer kernels "
                          "(transformers whose per-tensor int8 misses the ranges), tuned"),
    # the same with vpmaddubsw's saturating int16 pair sums (AVX-512 or AVX2): onnxruntime's choice on CPUs
    # without VNNI, offered beside the exact kernels so the ranges judge accuracy and the rounds speed
    Candidate(name="tvm-int8-dynamic-saturating", backend="tvm", stage="compile", quantized_from="ort-int8-dynamic",
              int8_sums="saturating",
              description="TVM int8 as tvm-int8-dynamic with saturating vpmaddubsw sums (faster without VNNI)"),
    Candidate(name="tvm-int8-static-saturating", backend="tvm", stage="compile", quantized_from="ort-int8-static",
              needs_calibration=True, int8_sums="saturating",
              description="TVM int8 as tvm-int8-static with saturating vpmaddubsw sums (faster without VNNI)"),
    # 7-bit weights: vpmaddubsw's int16 pair sums cannot overflow, so the saturating kernels are exact too
    Candidate(name="tvm-int8-dynamic-7bit", backend="tvm", stage="compile", quantized_from="ort-int8-dynamic-7bit",
              int8_sums="saturating",
              description="TVM int8: ort-int8-dynamic-7bit's quantization on vpmaddubsw (exact with 7-bit weights)"),
    Candidate(name="ort-fp32-basic", backend="onnxruntime", builder=f"{_C}.ort_fp32:build_basic",
              description="fp32 model, onnxruntime graph optimization level basic"),
    Candidate(name="ort-fp32-extended", backend="onnxruntime", builder=f"{_C}.ort_fp32:build_extended",
              description="fp32 model, onnxruntime graph optimization level extended"),
    Candidate(name="ort-fp32-1thread", backend="onnxruntime", builder=f"{_C}.ort_fp32:build_one_thread",
              description="fp32 model, one intra-op thread"),
    Candidate(name="ort-fp32-folded", backend="onnxruntime", builder=f"{_C}.ort_folded:build",
              description="fp32, kiln's exact folds: constant affine chains into the convolutions beside them, "
                          "a written-out HardSwish as the operator, the rest as one BatchNormalization (mobile CNN "
                          "exports)"),
    Candidate(name="ort-int8-dynamic", backend="onnxruntime", accuracy_aware=True,
              builder=f"{_C}.ort_int8_dynamic:build",
              description="int8 weights for MatMul/Gemm, dynamic activations"),
    Candidate(name="ort-int8-dynamic-7bit", backend="onnxruntime", accuracy_aware=True,
              builder=f"{_C}.ort_int8_dynamic:build_7bit",
              description="int8 weights restricted to 7 bits (reduce_range) for MatMul/Gemm, dynamic activations: "
                          "exact on CPUs without VNNI, where u8 x s8 sums saturate"),
    Candidate(name="ort-int8-static", backend="onnxruntime", accuracy_aware=True, needs_calibration=True,
              builder=f"{_C}.ort_int8_static:build",
              description="int8 QDQ, uint8 activations, per-channel int8 weights, calibrated"),
    Candidate(name="ort-int8-smooth", backend="onnxruntime", accuracy_aware=True, needs_calibration=True,
              builder=f"{_C}.ort_int8_dynamic:build_smooth",
              description="SmoothQuant, per-channel dynamic int8 of the MatMuls with constant weights (unfused)"),
    Candidate(name="ort-fp32-fused", backend="onnxruntime", builder=f"{_C}.ort_fused:build_fused",
              description="onnxruntime's transformer fusions (attention, skip/embed layer norm, bias-gelu)"),
    Candidate(name="ort-int8-fused-dynamic", backend="onnxruntime", accuracy_aware=True,
              builder=f"{_C}.ort_fused:build_fused_dynamic",
              description="fused transformer, per-channel dynamic int8 (QAttention)"),
    Candidate(name="ort-int8-fused-smooth", backend="onnxruntime", accuracy_aware=True, needs_calibration=True,
              builder=f"{_C}.ort_fused:build_fused_smooth",
              description="fused transformer, SmoothQuant, per-channel dynamic int8"),
    Candidate(name="ort-int8-fused-static", backend="onnxruntime", accuracy_aware=True, needs_calibration=True,
              builder=f"{_C}.ort_fused:build_fused_static",
              description="fused transformer, static QDQ int8 MatMuls, calibrated"),
)

# what runs when nothing is said: the reference, compilation, the cheaper graph level, the exact folds, and both
# int8 schemes
# (static int8 is skipped, with that reason, when the program has no data to calibrate on; the fused ones
# when the model is not a transformer)
DEFAULT = (BASELINE, "tvm", "ort-fp32-basic", "ort-fp32-folded", "ort-int8-dynamic", "ort-int8-static",
           "ort-fp32-fused", "ort-int8-fused-dynamic", "ort-int8-fused-smooth", "ort-int8-fused-static")
# added to the default set where the target has no VNNI (kiln.optimize.plan): its u8 x s8 kernels saturate
NO_VNNI_DEFAULT = ("ort-int8-dynamic-7bit",)


def all_names() -> list[str]:
    return names()


def check(chosen: list[str]) -> list[str]:
    """The chosen names, known and de-duplicated, with the baseline first (it is always measured), and the
    onnxruntime int8 candidate each TVM int8 one compiles (measured beside it: same quantization)."""
    unknown = sorted(set(chosen) - set(REGISTRY))
    if unknown:
        raise KilnError(f"unknown candidates {unknown}", hint=f"choose from {', '.join(names())}")
    sources = [REGISTRY[n].quantized_from for n in chosen if REGISTRY[n].quantized_from]
    return list(dict.fromkeys([BASELINE, *chosen, *sources]))


def of_stage(chosen: list[str], stage: Stage) -> list[str]:
    return [n for n in chosen if REGISTRY[n].stage == stage]


__all__ = ["BASELINE", "DEFAULT", "NO_VNNI_DEFAULT", "REGISTRY", "BuildContext", "Built", "Candidate",
           "Skipped", "all_names", "check", "get", "names", "of_stage"]
