"""kiln's own int8 compiler: its x86 dot intrinsics against numpy, the QDQ/MatMulInteger lowering against
onnxruntime's int8, a node kept in fp32 staying fp32, and the TVM int8 candidates through the optimize flow."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.compiler.int8 import dense, packing
from kiln.compiler.int8.intrinsics import INTRINSICS, for_cpu, registered
from kiln.cpu import detected_int8_isa
from kiln.errors import KilnError

from conftest import run_kiln


def usable() -> list[str]:
    """The intrinsics this CPU can run (every CPU these tests run on has AVX2)."""
    return [k for k in INTRINSICS if _runs_here(k)]


def _runs_here(key: str) -> bool:
    try:
        return for_cpu(detected_int8_isa(), key) == key
    except Exception:
        return False


def one_exact_per_lane_width() -> list[str]:
    """An exact intrinsic this CPU runs per vector width (its output lanes: 16 for 512-bit, 8 for 256-bit), the
    one kiln picks for the CPU first. Enough for the lowering tests: the lowering differs only by the lanes it
    pads and packs to, and test_int8_intrinsics_against_numpy checks every intrinsic bit for bit."""
    picked: dict[int, str] = {}
    for key in [for_cpu(detected_int8_isa()), *usable()]:
        if key in usable() and INTRINSICS[key].exact:
            picked.setdefault(INTRINSICS[key].n_lanes, key)
    return list(picked.values())


def _saturating(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """vpmaddubsw then vpmaddwd by ones, in numpy: u8 x s8 products summed in pairs into int16 with saturation,
    then the pairs of pairs summed into int32."""
    prod = a[:, :, None].astype(np.int64) * w[None, :, :].astype(np.int64)  # [M, K, N]
    pairs = np.clip(prod[:, 0::2] + prod[:, 1::2], -32768, 32767)  # [M, K/2, N]
    return pairs.sum(axis=1)


def _compile_dense(key: str, m: int, k: int, n: int):
    import tvm
    from tvm import te

    from kiln.compiler.int8.space import schedule
    from kiln.compiler.targets import target_config

    intrin = registered(key)
    a = te.placeholder((m, k), "uint8", name="a")
    w = te.placeholder((n // intrin.n_lanes, k // intrin.k_lanes, intrin.n_lanes, intrin.k_lanes), "int8", name="w")
    out = dense.int8_dense(a, w, intrin.n_lanes, intrin.k_lanes)
    sch = tvm.s_tir.Schedule(te.create_prim_func([a, w, out]), seed=1)
    schedule(sch, intrin)  # the tuned kernels' schedule, with sampled tile sizes
    return tvm.compile(sch.mod, target=tvm.target.Target(target_config("llvm"))), intrin


@pytest.mark.parametrize("key", list(INTRINSICS))
def test_int8_intrinsics_against_numpy(key):
    """Every intrinsic this CPU has, scheduled as the tuner schedules it, on full-range u8 x s8 values: the
    exact ones give numpy's int32 sums bit for bit; the vpmaddubsw ones give numpy's model of their int16
    saturation (and differ from the exact sums: what the gate's accuracy check is there for)."""
    import tvm

    if not _runs_here(key):  # no emulator runs AVX-512 (qemu's TCG stops at AVX2): what this CPU's user gets
        assert key in ("vnni", "avx512", "avx512-exact") and "avx2" in usable(), usable()
        with pytest.raises(KilnError, match=f"the int8 intrinsic '{key}' needs .*which this CPU"):
            for_cpu(detected_int8_isa(), key)  # asked for by name: refused, naming what it needs
        assert for_cpu(detected_int8_isa()) in usable()  # auto: an AVX2 sibling, checked by its own case here
        return
    m, k, n = 24, 64, 48
    lib, intrin = _compile_dense(key, m, k, n)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    got = tvm.runtime.tensor(np.zeros((m, n), np.int32))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(packing.pack(w, intrin)), got)
    exact = a.astype(np.int64) @ w.astype(np.int64)
    if intrin.exact:
        np.testing.assert_array_equal(got.numpy(), exact)
    else:
        np.testing.assert_array_equal(got.numpy(), _saturating(a, w))
        assert not np.array_equal(got.numpy(), exact)


@pytest.mark.parametrize("isa, exact, saturating", [("amx", "vnni", "avx512"), ("avx512-vnni", "vnni", "avx512"),
                                                     ("avx512", "avx512-exact", "avx512"),
                                                     ("avx-vnni", "avx2-exact", "avx2"), ("avx2", "avx2-exact", "avx2"),
                                                     ("sse", None, None)])
def test_each_cpu_gets_its_widest_exact_and_saturating_intrinsic(isa, exact, saturating):
    """tvm-int8-* candidates get the exact kernels, the -saturating ones vpmaddubsw's (what an AVX2-only CPU runs
    for each, told apart before any tuning)."""
    assert for_cpu(isa) == exact and for_cpu(isa, saturating=True) == saturating


def test_packing_round_trips():
    intrin = registered("avx2-exact")
    w = np.random.default_rng(1).integers(-128, 128, (32, 24)).astype(np.int8)
    packed = packing.pack(w, intrin)
    assert packed.shape == (24 // 8, 32 // 2, 8, 2)
    np.testing.assert_array_equal(packing.unpack(packed), w)


def _mlp(path, excluded_width: int = 24):
    """MatMul -> Add -> Relu -> Gemm(transB) -> Relu -> MatMul: the three kinds of matmul quantizers see."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.normal(size=(32, 64)).astype(np.float32), rng.normal(size=64).astype(np.float32)
    w2, b2 = rng.normal(size=(48, 64)).astype(np.float32), rng.normal(size=48).astype(np.float32)
    w3 = rng.normal(size=(48, excluded_width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
             helper.make_node("Add", ["h", "b1"], ["h1"], name="bias"),
             helper.make_node("Relu", ["h1"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["g"], name="gemm", transB=1),
             helper.make_node("Relu", ["g"], ["r2"], name="relu2"),
             helper.make_node("MatMul", ["r2", "w3"], ["y"], name="last")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, excluded_width])],
                              [numpy_helper.from_array(v, n) for n, v in
                               (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2), ("w3", w3))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _quantized(tmp_path, kind: str, exclude: tuple[str, ...] = (), weights: str = "s8"):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src = _mlp(tmp_path / "mlp.onnx")
    out = tmp_path / f"mlp-{kind}-{weights}.onnx"
    weight_type = QuantType.QUInt8 if weights == "u8" else QuantType.QInt8  # s7: int8 in 7 bits
    rng = np.random.default_rng(2)
    if kind == "static":
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter([{"x": rng.normal(size=(8, 32)).astype(np.float32)} for _ in range(16)])

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=weights == "s8",
                        activation_type=QuantType.QUInt8, weight_type=weight_type,
                        extra_options={"WeightSymmetric": weights == "s8"},  # u8: per tensor, with a zero point
                        nodes_to_exclude=list(exclude))
    else:
        quantize_dynamic(str(src), str(out), weight_type=weight_type, per_channel=True,
                         nodes_to_exclude=list(exclude), reduce_range=weights == "s7")
    return out


def _run_tvm(mod, x, target: str = "host"):
    import tvm
    from tvm import relax

    from kiln.compiler.targets import target_config

    ex = tvm.compile(mod, target=tvm.target.Target(target_config(target)))
    return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()


def _ort(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("kind, weights", [("static", "s8"), ("dynamic", "s8"), ("static", "u8"), ("dynamic", "u8")])
def test_quantized_matmul_and_gemm_lowered_to_integer_kernels(tmp_path, kind, weights):
    """Static QDQ and dynamic (MatMulInteger) MatMul and Gemm become kiln's int8 dense kernels (no fp32 matmul
    is left) whose outputs match onnxruntime's int8 within one quantization step of the output (one exact
    intrinsic per lane width). uint8 weights with a zero point (U8U8, what kiln quantizes for a CPU without VNNI)
    too: shifted to int8, the zero point's term a run-time row sum of the activations."""
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8.qdq import rewrite

    path = _quantized(tmp_path, kind, weights=weights)
    x = np.random.default_rng(3).normal(size=(8, 32)).astype(np.float32)
    expected = _ort(path, x)
    mod = from_onnx(onnx.load(path), keep_params_in_input=False)
    for key in one_exact_per_lane_width():
        lowered, report = rewrite(mod, registered(key))
        assert len(report.rewritten) == 3 and not report.skipped, report
        assert all(r.startswith(kind) for r in report.rewritten)
        script = lowered["main"].script()
        assert "R.matmul" not in script and script.count("kiln_int8_dense") >= 3
        got = _run_tvm(lowered, x)
        step = np.abs(expected).max() / 127  # one step of an 8-bit output
        assert np.abs(got - expected).max() <= step, (key, np.abs(got - expected).max(), step)


def test_dynamic_quantization_is_one_kernel_with_the_same_bits(tmp_path):
    """Each DynamicQuantizeLinear (max, min, scale, zero point, quantize: six kernels as TVM imports it) is one
    kernel, and the model's outputs are bit for bit those of the graph as imported."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler import pipelines
    from kiln.compiler.int8 import qdq

    path = _quantized(tmp_path, "dynamic")
    x = np.random.default_rng(3).normal(size=(8, 32)).astype(np.float32)
    intrin = _exact_intrinsic()

    def kernels(mod) -> list[str]:
        """The kernels `main` calls, in order (after fusion, as tuning sees them)."""
        with tvm.target.Target("llvm"):
            lowered = pipelines.lowering()(mod)
        return re.findall(r"R\.call_tir\((?:cls\.)?(\w+)", lowered["main"].script())

    fused, report = qdq.rewrite(from_onnx(onnx.load(path), keep_params_in_input=False), intrin)
    imported, unfused = qdq.rewrite(from_onnx(onnx.load(path), keep_params_in_input=False), intrin,
                                    fuse_quantize=False)  # the pipeline without fuse-dynamic-quantize
    assert report.quantize_fused and not unfused.quantize_fused
    assert "R.max(" in imported["main"].script() and "R.max(" not in fused["main"].script()
    assert sum(name.startswith("dynamic_quantize") for name in kernels(fused)) == 3  # one per quantized input
    assert len(kernels(imported)) - len(kernels(fused)) == 3 * 5, (kernels(fused), kernels(imported))
    got, expected = _run_tvm(fused, x), _run_tvm(imported, x)
    assert np.array_equal(got, expected), np.abs(got - expected).max()
    for scale in (0.0, 1e-30, 1e6):  # all zeros (a zero scale, as the imported graph divides by it), tiny, huge
        probe = (x * scale).astype(np.float32)
        assert np.array_equal(_run_tvm(fused, probe), _run_tvm(imported, probe), equal_nan=True), scale


def test_smoothquant_scaling_joins_the_dynamic_quantize_kernel(tmp_path):
    """A per-channel constant multiply read only by a DynamicQuantizeLinear (SmoothQuant's scaling after a layer
    norm) is computed inside the fused kernel where it reads x: one kernel fewer, the same bits."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8 import qdq

    rng = np.random.default_rng(8)
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1),
             helper.make_node("Mul", ["n", "smooth"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["m"]),
             helper.make_node("Add", ["m", "n"], ["y"])]  # the layer norm's output is read again: it stays
    weights = {"gamma": rng.normal(size=32), "beta": rng.normal(size=32), "smooth": rng.uniform(0.5, 2, size=32),
               "w": rng.normal(size=(32, 32))}
    graph = helper.make_graph(nodes, "smooth", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 32])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "smooth.onnx")
    quantize_dynamic(str(tmp_path / "smooth.onnx"), str(tmp_path / "smooth-int8.onnx"), weight_type=QuantType.QInt8)
    x = rng.normal(size=(1, 6, 32)).astype(np.float32)

    def lowered(fuse_quantize: bool):
        return qdq.rewrite(from_onnx(onnx.load(tmp_path / "smooth-int8.onnx"), keep_params_in_input=False),
                           _exact_intrinsic(), fuse_quantize=fuse_quantize)[0]

    fused = lowered(True)
    text = fused["main"].script()
    # the kernel reads the norm and the constant: the multiply is no kernel of its own
    assert re.search(r"call_tir\(\w*dynamic_quantize\w*, \(\w+, metadata", text), text
    imported = lowered(False)
    got, expected = _run_tvm(fused, x), _run_tvm(imported, x)
    assert np.array_equal(got, expected), np.abs(got - expected).max()


@pytest.mark.parametrize("shape", [(1, 20, 384), (1, 128, 1536), (3, 5)])
def test_the_dynamic_quantize_kernel_as_the_tuner_schedules_it(shape):
    """The fused kernel's one schedule (what tuning measures and the build keeps) builds in seconds (the generic
    rules' unrolled reductions kept LLVM busy past the builder's timeout) and gives the unscheduled kernel's
    bits, on a MiniLM layer's activations at a natural length, at seq 128, and on a shape with odd dimensions."""
    import time

    import tvm
    from tvm import te
    from tvm.s_tir import Schedule

    from kiln.compiler.int8 import dynamic_quantize

    x = te.placeholder(shape, "float32", name="x")
    func = te.create_prim_func([x, *dynamic_quantize.dynamic_quantize_te(x)])
    sch = Schedule(func)
    dynamic_quantize.schedule(sch)
    data = np.random.default_rng(5).normal(size=shape).astype(np.float32) * 3 + 0.5
    outs = []
    for mod in (func, sch.mod["main"]):
        start = time.perf_counter()
        lib = tvm.compile(mod, target=tvm.target.Target("llvm"))
        assert time.perf_counter() - start < 60
        args = [tvm.runtime.tensor(data), tvm.runtime.tensor(np.zeros(shape, np.uint8)),
                tvm.runtime.tensor(np.zeros((), np.float32)), tvm.runtime.tensor(np.zeros((), np.uint8))]
        lib(*args)
        outs.append([a.numpy() for a in args[1:]])
    (y0, s0, z0), (y1, s1, z1) = outs
    assert np.array_equal(y0, y1) and s0 == s1 and z0 == z1
    high, low = np.maximum(np.float32(0), data.max()), np.minimum(np.float32(0), data.min())
    assert s0 == (high - low) / np.float32(255)  # what ONNX defines, in float32


@pytest.mark.parametrize("weights, sums", [("u8", "exact"), ("s7", "saturating")])
def test_int8_for_an_avx2_fleet_built_here_matches_onnxruntime(tmp_path, weights, sums):
    """--target x86-64-v3 on any host: its dynamic int8 (U8U8, or 7-bit weights) lowered with the AVX2
    intrinsics the target gets (exact, or vpmaddubsw, which 7-bit weights cannot saturate), compiled for the
    x86-64-v3 CPU, and equal to onnxruntime's int8 within one output step."""
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8.qdq import rewrite
    from kiln.compiler.targets import resolve

    v3 = resolve("x86-64-v3")
    key = for_cpu(v3.int8_isa, saturating=sums == "saturating")
    assert key in ("avx2-exact", "avx2"), key
    path = _quantized(tmp_path, "dynamic", weights=weights)
    x = np.random.default_rng(3).normal(size=(8, 32)).astype(np.float32)
    expected = _ort(path, x)
    lowered, report = rewrite(from_onnx(onnx.load(path), keep_params_in_input=False), registered(key))
    assert len(report.rewritten) == 3 and not report.skipped, report
    got = _run_tvm(lowered, x, "x86-64-v3")
    step = np.abs(expected).max() / 127
    assert np.abs(got - expected).max() <= step, (key, np.abs(got - expected).max(), step)


def test_a_node_kept_in_fp32_stays_fp32(tmp_path):
    """The accuracy-aware fallback keeps a node out of quantization: kiln's lowering leaves it an fp32 matmul
    and lowers the rest."""
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8.qdq import rewrite

    path = _quantized(tmp_path, "static", exclude=("last",))
    mod = from_onnx(onnx.load(path), keep_params_in_input=False)
    lowered, report = rewrite(mod, registered(usable()[0]))
    assert len(report.rewritten) == 2, report
    script = lowered["main"].script()
    assert script.count("R.matmul(") == 1 and 'dtype="float32") = R.matmul(' in script
    x = np.random.default_rng(4).normal(size=(8, 32)).astype(np.float32)
    expected = _ort(path, x)
    assert np.abs(_run_tvm(lowered, x) - expected).max() <= np.abs(expected).max() / 127


def test_tvm_int8_candidates_through_the_flow(kiln_env, digits_program):
    """tvm-int8-dynamic and tvm-int8-static compile the onnxruntime int8 builds (added to the run beside them),
    are tuned around this CPU's int8 intrinsic, measured and gated like every candidate; the saturating variant
    is built around vpmaddubsw beside the exact one; the run publishes, and the manifest names the intrinsic,
    the instruction set and each matmul lowered. 2 trials each: one for each of the two int8 kernels, the
    largest tasks, tuned first (every task tuned costs a search round of seconds; the rest keep TVM's default)."""
    proc = run_kiln(["optimize", str(digits_program), "--candidates",
                     "tvm-int8-dynamic,tvm-int8-static,tvm-int8-dynamic-saturating", "--trials", "2", "--json"],
                    kiln_env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    rows = {c["name"]: c for c in out["candidates"]}
    assert {"ort-int8-dynamic", "ort-int8-static"} <= set(rows)  # the sources, measured beside them
    exact, saturating = for_cpu(detected_int8_isa()), for_cpu(detected_int8_isa(), saturating=True)
    assert exact != saturating and saturating in ("avx512", "avx2")
    for name, expected, sums in (("tvm-int8-dynamic", exact, "exact"), ("tvm-int8-static", exact, "exact"),
                                 ("tvm-int8-dynamic-saturating", saturating, "int16 sums saturate")):
        row = rows[name]
        assert row["latency_ms"]["p50"] > 0 and row["metrics"], row  # built, measured and judged
        assert f"kiln passes: int8-{expected}" in " ".join(row["notes"]), row["notes"]
        if "dynamic" in name:  # each DynamicQuantizeLinear one kernel, listed in the pipeline
            assert "fuse-dynamic-quantize" in next(n for n in row["notes"] if n.startswith("kiln passes:"))
        int8 = next(n for n in row["notes"] if n.startswith("int8 kernels:"))
        assert f"int8 kernels: {expected} on {detected_int8_isa()} ({sums}), 2 matmul(s) lowered" in int8, int8
        # both trials ran; records other models (earlier tests) tuned on this CPU may measure more tasks
        tuned = re.match(r"tuning: 2 trials \(0 failed\), (\d+)/", row["notes"][0])
        assert tuned and int(tuned[1]) >= 2, row["notes"]
    assert rows["tvm-int8-dynamic"]["passed"] and rows["tvm-int8-static"]["passed"]
    assert out["schema_version"] and out["selected"] in rows  # published: the --json output is the manifest
    # the CPU's shared database now holds int8 kernels' records, which name kiln's intrinsics: a later run that
    # lowers no int8 (a fresh process) still opens it and builds (it failed: "TensorIntrin ... is not registered").
    # With no trials: the build opens the shared database to seed its own before any search (tuning.plan)
    shared = list((Path(kiln_env["KILN_HOME"]) / "tuning" / "shared").rglob("database_tuning_record.json"))
    assert any("kiln_int8_" in f.read_text() for f in shared), shared
    later = run_kiln(["optimize", str(digits_program), "--candidates", "tvm", "--trials", "0", "--json"], kiln_env)
    assert later.returncode == 0, later.stderr
    tvm = next(c for c in json.loads(later.stdout)["candidates"] if c["name"] == "tvm")
    assert not any("not registered" in r or "build failed" in r for r in tvm["reasons"]), tvm["reasons"]
    assert tvm["latency_ms"] and tvm["notes"][0].startswith("tuning: 0 trials"), tvm["notes"]  # built, not cached


def test_layers_of_one_shape_are_one_int8_tuning_task(tmp_path):
    """Two dynamic-int8 layers of the same shape, each with its own per-tensor weight scale: one int8 kernel
    to tune, run twice (a scale written into the kernel as a literal made each layer a task of its own)."""
    import tvm
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.s_tir import meta_schedule as ms

    from kiln.compiler import pipelines
    from kiln.compiler.int8.qdq import rewrite
    from kiln.compiler.int8.space import is_int8_task
    from kiln.compiler.targets import target_config

    rng = np.random.default_rng(5)
    weights = [rng.normal(scale=s, size=(32, 32)).astype(np.float32) for s in (1.0, 3.0)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="l0"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["h1"], name="l1"), helper.make_node("Relu", ["h1"], ["y"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 32])],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "two.onnx")
    quantize_dynamic(str(tmp_path / "two.onnx"), str(tmp_path / "two-int8.onnx"), weight_type=QuantType.QInt8)
    target = tvm.target.Target(target_config("llvm"))
    lowered, report = rewrite(from_onnx(onnx.load(tmp_path / "two-int8.onnx"), keep_params_in_input=False),
                              registered(usable()[0]))
    assert len(report.rewritten) == 2
    with target:
        tasks = ms.relax_integration.extract_tasks(pipelines.lowering()(lowered), target)
    int8 = [t for t in tasks if is_int8_task(t.dispatched[0])]
    assert [t.weight for t in int8] == [2], [(t.task_name, t.weight) for t in int8]


def _cnn_qdq(tmp_path):
    """Conv(3 -> 8) -> Relu -> Conv(8 -> 16, pad 1) -> Relu -> Conv(16 -> 16, 1x1) + residual -> MaxPool ->
    Conv(16 -> 12, stride 2, pad 1), static QDQ: a ResNet's block in small."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    rng = np.random.default_rng(6)
    weights = {"w0": rng.normal(size=(8, 3, 3, 3)), "w1": rng.normal(size=(16, 8, 3, 3)),
               "w1b": rng.normal(size=(16, 16, 1, 1)), "w2": rng.normal(size=(12, 16, 3, 3)),
               "b1": rng.normal(size=16)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w1b"], ["c1b"], name="conv1b"),
             helper.make_node("Add", ["c1b", "r1"], ["s1"]),
             helper.make_node("MaxPool", ["s1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 6, 6])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "cnn.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(16)])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(tmp_path / "cnn.onnx"), str(tmp_path / "cnn-qdq.onnx"), Reader(), per_channel=True,
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return tmp_path / "cnn-qdq.onnx"


def test_quantized_conv_lowered_to_integer_kernels(tmp_path):
    """Static QDQ Conv (padded, strided, with bias) becomes kiln's NHWC int8 kernel, outputs within one
    quantization step of onnxruntime's int8; the 3-channel stem too, its channels padded to the lanes. The graph
    runs channels-last from end to end: no transposes between the convolutions, around the residual add or the
    pooling (they took longer than the convolutions on ResNet-50-thin), only at the model's input and output.
    One exact intrinsic per lane width (the stem's channels are padded to each)."""
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8.qdq import rewrite

    path = _cnn_qdq(tmp_path)
    x = np.random.default_rng(7).normal(size=(1, 3, 12, 12)).astype(np.float32)
    expected = _ort(path, x)
    mod = from_onnx(onnx.load(path), keep_params_in_input=False)
    for key in one_exact_per_lane_width():
        lowered, report = rewrite(mod, registered(key))
        assert report.rewritten == ["static conv 8x3x3x3", "static conv 16x8x3x3", "static conv 16x16x1x1",
                                    "static conv 12x16x3x3"], report
        script = lowered["main"].script()
        assert not report.skipped and "R.nn.conv2d(" not in script and report.channels_last, report
        moved = [line for line in script.splitlines() if "R.permute_dims(" in line
                 and sum(int(d) > 1 for d in line.split("R.Tensor((")[1].split(")")[0].split(",")) > 1]
        assert len(moved) == 2, moved  # activations: the input to NHWC, the output back (weights and biases aside)
        got = _run_tvm(lowered, x)
        step = np.abs(expected).max() / 127
        assert np.abs(got - expected).max() <= step, (key, np.abs(got - expected).max(), step)


def _conv_qdq(tmp_path, name: str, nodes, weights: dict, x_shape, y_shape, rng):
    """A small convolutional graph, QDQ-quantized by onnxruntime as kiln's ort-int8-static does (per channel)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / f"{name}.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"x": rng.normal(size=x_shape).astype(np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.feeds, None)

    out = tmp_path / f"{name}-qdq.onnx"
    quantize_static(str(tmp_path / f"{name}.onnx"), str(out), Reader(), per_channel=True,
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _exact_intrinsic():
    """An exact int8 intrinsic this CPU runs."""
    return registered(next(k for k in usable() if INTRINSICS[k].exact))


def test_a_depthwise_conv_stays_fp32_in_the_channels_last_graph(tmp_path):
    """A grouped (depthwise) conv, which kiln's int8 kernel does not take, is named, runs as TVM's fp32 NHWC conv
    in the channels-last graph around it, and the model still gives onnxruntime int8's outputs."""
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8.qdq import rewrite

    rng = np.random.default_rng(9)
    weights = {"w0": rng.normal(size=(16, 3, 3, 3)), "wd": rng.normal(size=(16, 1, 3, 3)),
               "w1": rng.normal(size=(8, 16, 1, 1))}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "wd"], ["d"], pads=[1, 1, 1, 1], group=16),
             helper.make_node("Relu", ["d"], ["r1"]), helper.make_node("Conv", ["r1", "w1"], ["c1"]),
             helper.make_node("GlobalAveragePool", ["c1"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    qdq = _conv_qdq(tmp_path, "dw", nodes, weights, [1, 3, 12, 12], [1, 8], rng)
    x = rng.normal(size=(1, 3, 12, 12)).astype(np.float32)
    expected = _ort(qdq, x)
    lowered, report = rewrite(from_onnx(onnx.load(qdq), keep_params_in_input=False), _exact_intrinsic())
    assert report.rewritten == ["static conv 16x3x3x3", "static conv 8x16x1x1"], report
    assert report.skipped == ["static conv: groups 16"] and report.channels_last, report
    assert 'data_layout="NHWC"' in lowered["main"].script()  # the depthwise conv, fp32 and channels-last
    assert np.abs(_run_tvm(lowered, x) - expected).max() <= np.abs(expected).max() / 127


def test_a_transposed_conv_in_the_channels_last_graph_still_compiles(tmp_path):
    """A transposed convolution after int8 ones (a text detector's upsampling head) keeps NCHW in the
    channels-last graph: carried into NHWC it had no lowering and TVM's build failed ("CodeGenVM cannot emit
    this Relax operator"), so tvm-int8-static could not build PP-OCRv4's detector."""
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8.qdq import rewrite

    rng = np.random.default_rng(4)
    weights = {"w0": rng.normal(size=(8, 3, 3, 3)), "w1": rng.normal(size=(8, 8, 1, 1)),
               "wt": rng.normal(size=(8, 1, 2, 2)) * 0.3}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]), helper.make_node("Conv", ["r0", "w1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("ConvTranspose", ["r1", "wt"], ["up"], strides=[2, 2]),
             helper.make_node("Sigmoid", ["up"], ["y"])]
    qdq = _conv_qdq(tmp_path, "head", nodes, weights, [1, 3, 16, 16], [1, 1, 16, 16], rng)
    x = rng.normal(size=(1, 3, 16, 16)).astype(np.float32)
    expected = _ort(qdq, x)
    lowered, report = rewrite(from_onnx(onnx.load(qdq), keep_params_in_input=False), _exact_intrinsic())
    assert report.rewritten == ["static conv 8x3x3x3", "static conv 8x8x1x1"] and report.channels_last, report
    got = _run_tvm(lowered, x)
    assert got.shape == expected.shape == (1, 1, 16, 16)
    assert np.abs(got - expected).max() <= 1 / 127  # sigmoid outputs in (0, 1): within a quantization step


def test_round_trips_around_quantized_convs_are_removed_exactly(tmp_path, monkeypatch):
    """An NHWC input transposed to NCHW by the model, and a max pool between quantized convs (ResNet-50-thin's
    stem): the quantizer's requantize around the transpose and ConvertLayout's transpose back cancel, and the
    pool runs on the integers; before, those were a float kernel that took 6 % of the model's time. The outputs
    are the same numbers as without the simplification."""
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler.int8 import qdq

    rng = np.random.default_rng(6)
    weights = {"w0": rng.normal(size=(8, 3, 3, 3)), "w1": rng.normal(size=(8, 8, 1, 1))}
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w0"], ["c0"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "w1"], ["c1"]), helper.make_node("GlobalAveragePool", ["c1"], ["g"]),
             helper.make_node("Flatten", ["g"], ["y"])]
    model = _conv_qdq(tmp_path, "stem", nodes, weights, [1, 12, 12, 3], [1, 8], rng)
    x = rng.normal(size=(1, 12, 12, 3)).astype(np.float32)

    def lowered():
        return qdq.rewrite(from_onnx(onnx.load(model), keep_params_in_input=False), _exact_intrinsic())[0]

    simplified = lowered()
    text = simplified["main"].script()
    assert not re.search(r"\(\(1, (3, 12, 12|12, 12, 3)\), dtype=\"\w+\"\) = R\.permute_dims", text), text
    assert re.search(r"dtype=\"uint8\"\) = R\.nn\.max_pool2d", text), text
    monkeypatch.setattr(qdq.roundtrips, "simplify", lambda mod, func_name="main": mod)
    before = lowered()
    assert "permute_dims(lv" in before["main"].script()  # the round trips were there to remove
    got, expected = _run_tvm(simplified, x), _run_tvm(before, x)
    assert np.array_equal(got, expected), np.abs(got - expected).max()
    assert np.abs(got - _ort(model, x)).max() <= np.abs(expected).max() / 127


def test_conv_kernel_as_the_tuner_schedules_it():
    """The NHWC int8 convolution, scheduled by the tuner's space (tensorized), equals numpy's convolution."""
    import tvm
    from tvm import te

    from kiln.compiler.int8.space import schedule
    from kiln.compiler.targets import target_config

    intrin = _exact_intrinsic()
    rng = np.random.default_rng(8)
    n, h, w_, c, o, k, stride = 1, 9, 9, 8, 32, 3, 2
    a = rng.integers(0, 256, (n, h, w_, c)).astype(np.uint8)
    w = rng.integers(-128, 128, (k, k, c, o)).astype(np.int8)
    a_t = te.placeholder(a.shape, "uint8", name="a")
    w_t = te.placeholder((o // intrin.n_lanes, k * k * c // intrin.k_lanes, intrin.n_lanes, intrin.k_lanes), "int8")
    out = dense.int8_conv2d_nhwc(a_t, w_t, (k, k), (stride, stride), (1, 1), intrin.n_lanes, intrin.k_lanes)
    sch = tvm.s_tir.Schedule(te.create_prim_func([a_t, w_t, out]), seed=3)
    schedule(sch, intrin)
    lib = tvm.compile(sch.mod, target=tvm.target.Target(target_config("llvm")))
    oh = (h - k) // stride + 1
    got = tvm.runtime.tensor(np.zeros((n, oh, oh, o), np.int32))
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(packing.pack(w.reshape(k * k * c, o), intrin)), got)
    expected = np.zeros((n, oh, oh, o), np.int64)
    for y in range(oh):
        for x in range(oh):
            patch = a[:, y * stride:y * stride + k, x * stride:x * stride + k, :].astype(np.int64)
            expected[:, y, x, :] = np.einsum("nhwc,hwco->no", patch, w.astype(np.int64))
    np.testing.assert_array_equal(got.numpy(), expected)


def test_smoothquant_int8_compiled_by_tvm_on_a_bert_shaped_graph(kiln_env, tmp_path):
    """tvm-int8-smooth compiles ort-int8-smooth's model (SmoothQuant, per-channel dynamic int8 of the weight
    MatMuls, attention's activation x activation MatMuls kept fp32): every weight MatMul becomes a kiln int8
    kernel, and the TVM build is measured and judged by the same range as onnxruntime running that model. No
    tuning: its kernels are the dynamic ones test_tvm_int8_candidates_through_the_flow tunes (a search round per
    task of this graph's ~20 cost minutes), and the lowering and the outputs are what this test is about."""
    import onnx_models

    model = tmp_path / "tiny-bert" / "model.onnx"
    model.parent.mkdir()
    onnx_models.tiny_bert(model)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (30, 1, 16))
    np.savez(tmp_path / "tiny-bert.npz", input_ids=ids, attention_mask=np.ones_like(ids),
             token_type_ids=np.zeros_like(ids))
    shapes = [a for n in ("input_ids", "attention_mask", "token_type_ids") for a in ("--shape", f"{n}=1x16")]
    proc = run_kiln(["optimize", str(model), *shapes, "--data", str(tmp_path / "tiny-bert.npz"), "--range",
                     "cosine>=0.98", "--candidates", "tvm-int8-smooth", "--trials", "0", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    rows = {c["name"]: c for c in json.loads(proc.stdout)["candidates"]}
    source = rows["ort-int8-smooth"]  # added to the run, measured beside it
    assert "SmoothQuant alpha" in source["settings"]["quantization"], source["settings"]
    assert "4 activation x activation MatMul(s) kept fp32" in source["settings"]["quantization"]
    tvm = rows["tvm-int8-smooth"]
    assert tvm["latency_ms"]["p50"] > 0 and "cosine" in tvm["metrics"], tvm["reasons"]
    int8 = next(n for n in tvm["notes"] if n.startswith("int8 kernels:"))
    # 2 layers x (query, key, value, output, two feed-forward) weight MatMuls, each per-channel dynamic int8
    assert ", 12 matmul(s) lowered: dynamic 32x32" in int8, int8
    assert abs(tvm["metrics"]["cosine"]["value"] - source["metrics"]["cosine"]["value"]) < 0.01


def _layer_norm_model(tmp_path, rng) -> Path:
    """Two transformer sub-layers' ends, dynamically quantized: norm -> [SmoothQuant scale] -> int8 matmul ->
    residual add, twice; outputs the second norm (read again by the residual) and the last sum."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hidden = 48
    nodes = [helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["n1"], axis=-1, epsilon=1e-12),
             helper.make_node("Mul", ["n1", "smooth"], ["s1"]), helper.make_node("MatMul", ["s1", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "n1"], ["r1"]),
             helper.make_node("LayerNormalization", ["r1", "g2", "b2"], ["n2"], axis=-1, epsilon=1e-12),
             helper.make_node("MatMul", ["n2", "w2"], ["m2"]), helper.make_node("Add", ["m2", "n2"], ["y"])]
    weights = {"g1": rng.normal(size=hidden), "b1": rng.normal(size=hidden), "g2": rng.normal(size=hidden),
               "b2": rng.normal(size=hidden), "smooth": rng.uniform(0.5, 2, size=hidden),
               "w1": rng.normal(size=(hidden, hidden)) / 4, "w2": rng.normal(size=(hidden, hidden)) / 4}
    shape = [1, 7, hidden]
    graph = helper.make_graph(nodes, "norms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("n2", "y")],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "norms.onnx")
    quantize_dynamic(str(tmp_path / "norms.onnx"), str(tmp_path / "norms-int8.onnx"), weight_type=QuantType.QInt8)
    return tmp_path / "norms-int8.onnx"


def test_a_layer_norm_is_computed_inside_the_dynamic_quantize_kernel(tmp_path):
    """fuse-norm-quantize: each layer norm that feeds a dynamic quantization (with SmoothQuant's scale or
    without) is computed in that kernel, one kernel fewer each; the norm the residual reads again is within
    1e-4 of the unfused graph's and the int8 matmul after it within one step of its output."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from kiln.compiler import passes, pipelines
    from kiln.compiler.int8 import qdq
    from kiln.compiler.targets import target_config

    rng = np.random.default_rng(11)
    path = _layer_norm_model(tmp_path, rng)
    unfused, _ = qdq.rewrite(from_onnx(onnx.load(path), keep_params_in_input=False), _exact_intrinsic())
    fused, applied = passes.apply(unfused, ("fuse-norm-quantize",))
    assert applied == ["fuse-norm-quantize"]
    text = fused["main"].script()
    assert "R.nn.layer_norm" not in text and text.count("call_tir(dynamic_quantize_norm") == 2, text

    def kernels(mod) -> list[str]:
        with tvm.target.Target("llvm"):
            return re.findall(r"R\.call_tir\((?:cls\.)?(\w+)", pipelines.lowering()(mod)["main"].script())

    assert len(kernels(unfused)) - len(kernels(fused)) == 2, (kernels(unfused), kernels(fused))

    def run(mod, x):
        ex = tvm.compile(mod, target=tvm.target.Target(target_config("host")))
        return [t.numpy() for t in relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))]

    for scale in (1.0, 1e-3, 1e3):
        x = (rng.normal(size=(1, 7, 48)) * scale + scale).astype(np.float32)
        (norm, y), (norm0, y0) = run(fused, x), run(unfused, x)
        assert np.abs(norm - norm0).max() <= 1e-4 * np.abs(norm0).max(), scale
        step = np.abs(y0).max() / 127
        assert np.abs(y - y0).max() <= step, (scale, np.abs(y - y0).max(), step)


@pytest.mark.parametrize("shape", [(1, 20, 384), (1, 128, 384), (2, 3, 40)])
def test_the_norm_and_quantize_kernel_as_the_tuner_schedules_it(shape):
    """The fused norm's fixed schedule gives the unscheduled kernel's bits (it reorders loops, not sums), and
    the norm is numpy's within float32 rounding."""
    import tvm
    from tvm import te
    from tvm.s_tir import Schedule

    from kiln.compiler.int8 import dynamic_quantize
    from kiln.compiler.int8.norm_quantize import norm_dynamic_quantize_te

    width = shape[-1]
    x, g, b = (te.placeholder(s, "float32", name=n) for s, n in ((shape, "x"), ((width,), "g"), ((width,), "b")))
    func = te.create_prim_func([x, g, b, *norm_dynamic_quantize_te(x, g, b, epsilon=1e-12)])
    sch = Schedule(func)
    dynamic_quantize.schedule(sch)
    rng = np.random.default_rng(2)
    data = [rng.normal(size=s).astype(np.float32) * 3 + 0.5 for s in (shape, (width,), (width,))]
    outs = []
    for mod in (func, sch.mod["main"]):
        args = [tvm.runtime.tensor(a) for a in data] + [
            tvm.runtime.tensor(np.zeros(shape, np.uint8)), tvm.runtime.tensor(np.zeros((), np.float32)),
            tvm.runtime.tensor(np.zeros((), np.uint8)), tvm.runtime.tensor(np.zeros(shape, np.float32))]
        tvm.compile(mod, target=tvm.target.Target("llvm"))(*args)
        outs.append([a.numpy() for a in args[3:]])
    assert all(np.array_equal(a, b) for a, b in zip(*outs, strict=True))
    v, g_, b_ = data
    mean = v.mean(-1, keepdims=True)
    expected = (v - mean) / np.sqrt(((v - mean) ** 2).mean(-1, keepdims=True) + 1e-12) * g_ + b_
    assert np.abs(outs[0][3] - expected).max() <= 1e-5 * np.abs(expected).max()
