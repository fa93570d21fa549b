"""Compression candidates through the real flow: built from the registry, gated like every candidate."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_kiln, store_snapshot

INT8 = "onnxruntime,ort-fp32-basic,ort-int8-dynamic,ort-int8-static"


def _by_name(manifest):
    return {c["name"]: c for c in manifest["candidates"]}


def test_tight_range_rejects_int8(kiln_env, digits_program):
    """The digits example holds probabilities to 1e-3 of onnxruntime: int8 keeps top-1 but is refused."""
    proc = run_kiln(["optimize", str(digits_program / "program_strict.py"), "--candidates", INT8, "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["name"] == "digits-strict" and manifest["program"]["file"] == "program_strict.py"
    cands = _by_name(manifest)
    assert {n for n in cands if "-fallback" not in n} == set(INT8.split(","))
    retries = [c for n, c in cands.items() if "-fallback" in n]  # accuracy-aware int8 tried keeping nodes in fp32
    # (QDQ's first retry: its compute operators only, nothing kept)
    assert retries and all(c["settings"]["kept_fp32"] or c["settings"]["quantized_ops"] for c in retries)
    assert any(c["settings"]["kept_fp32"] for c in retries)
    for name in ("ort-int8-dynamic", "ort-int8-static"):
        c = cands[name]
        assert c["latency_ms"] and c["metrics"]["top1"]["passed"]  # built, measured, still a good classifier
        assert not c["metrics"]["max_abs_diff"]["passed"] and not c["passed"]
        assert any("max_abs_diff" in r for r in c["reasons"])
        assert "int8" in c["settings"]["quantization"]
    assert cands["ort-int8-static"]["settings"]["calibration_feeds"] > 0
    assert manifest["selected"] not in ("ort-int8-dynamic", "ort-int8-static")  # a retry may ship: it passed
    folder = Path(kiln_env["KILN_STORE"]) / "digits-strict" / manifest["id"]
    svg = (folder / "report" / "candidates.svg").read_text()  # speed vs accuracy, saved with the artifact
    assert svg.startswith("<svg") and all(name in svg for name in cands) and "(published)" in svg
    assert "report/candidates.svg" in manifest["files"]


def test_classification_ranges_accept_int8(kiln_env, digits_program):
    """The digits example's ranges are about classification: int8 keeps them and passes the gate (whether it is
    published depends on its speed)."""
    proc = run_kiln(["optimize", str(digits_program), "--candidates", INT8, "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    cands = _by_name(manifest)
    assert cands["ort-int8-static"]["passed"] and cands["ort-int8-dynamic"]["passed"]
    selected = cands[manifest["selected"]]
    eligible = [c for c in cands.values() if c["eligible"]]  # the largest paired speed-up among the eligible
    assert selected["speedup"]["value"] == max(c["speedup"]["value"] for c in eligible)
    import onnx
    import onnxruntime as ort

    import kiln

    folder = Path(kiln_env["KILN_STORE"]) / "digits" / manifest["id"]
    ops = {n.op_type for n in onnx.load(str(folder / "model.onnx")).graph.node}  # the winner's model was shipped
    quantized = bool(ops & {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger"})
    assert quantized == manifest["selected"].startswith("ort-int8"), (manifest["selected"], ops)
    level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    session = kiln.load(folder).runner.session  # and it runs with the winner's graph level
    assert session.get_session_options().graph_optimization_level == level[selected["settings"]["optimization"]]


def test_no_calibration_data_skips_static_int8(kiln_env, digits_program):
    proc = run_kiln(["optimize", str(digits_program / "model.onnx"), "--shape", "pixels=1x64", "--candidates",
                     "onnxruntime,ort-int8-static", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    static = _by_name(json.loads(proc.stdout))["ort-int8-static"]
    assert not static["passed"] and static["reasons"][0].startswith("skipped: no calibration data")


def test_bare_model_with_data_ranges_and_name(kiln_env, digits_program, tmp_path):
    """A bare model.onnx with the user's samples and ranges, no program.py: static int8 calibrates on the
    samples, the ranges given are the gate, the name is the store's, and the artifact holds the program.py
    kiln wrote (so reoptimize finds the same data and ranges)."""
    folder = tmp_path / "digits-mlp"
    folder.mkdir()
    shutil.copy(digits_program / "model.onnx", folder / "model.onnx")
    digits = np.load(digits_program / "digits.npz")
    np.savez(tmp_path / "samples.npz", pixels=digits["x_test"][:60], labels=digits["y_test"][:60])
    args = ["optimize", str(folder / "model.onnx"), "--shape", "pixels=1x64", "--data", str(tmp_path / "samples.npz"),
            "--range", "top1>=0.9", "--range", "agreement>=0.95", "--candidates", "onnxruntime,ort-int8-static",
            "--trials", "0", "--json"]
    proc = run_kiln(args, kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert manifest["name"] == "digits-mlp"  # model.onnx is named after its folder
    static = _by_name(manifest)["ort-int8-static"]
    assert static["settings"]["calibration_feeds"] > 0 and static["metrics"]["top1"]["value"] > 0.9
    assert set(static["metrics"]) == {"top1", "agreement"}  # the ranges given replace the default ones
    assert static["metrics"]["agreement"]["range"] == ">= 0.95"
    saved = Path(kiln_env["KILN_STORE"]) / "digits-mlp" / manifest["id"] / "program"
    assert "kiln.metrics.agreement(at_least=0.95" in (saved / "program.py").read_text()
    assert sorted(p.name for p in saved.iterdir()) == ["data.npz", "model.onnx", "program.py"]

    named = run_kiln([*args[:-1], "--name", "mlp-v2", "--json"], kiln_env)
    assert named.returncode == 0 and json.loads(named.stdout)["name"] == "mlp-v2", named.stderr
    for bad, needle in ((["--range", "cosine<=0.9"], "cosine is higher is better"),
                        (["--range", "accuracy>=0.9"], "unknown metric 'accuracy'"),
                        (["--data", str(tmp_path / "missing.npz")], "no such file or folder")):
        proc = run_kiln(["optimize", str(folder / "model.onnx"), "--shape", "pixels=1x64", "--trials", "0",
                         "--candidates", "onnxruntime", *bad], kiln_env)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = run_kiln(["optimize", str(digits_program), "--range", "top1>=0.9", "--candidates", "onnxruntime"], kiln_env)
    assert proc.returncode == 2 and "describe a bare .onnx model" in proc.stderr, proc.stderr


def test_per_position_agreement_from_the_cli(kiln_env, tmp_path):
    """A recognizer's [1, T, C] output held to `agreement[axis=-1]>=0.99`: every candidate is scored on the share
    of time steps whose class matches onnxruntime's (the worst sample beside it), the program kiln writes keeps
    the axis, and an axis counted from the front is refused with the form to use."""
    import onnx_models

    model = onnx_models.line_recognizer(tmp_path / "rec.onnx", width=32)
    x = np.random.default_rng(0).standard_normal((24, 1, 3, 8, 32)).astype(np.float32)
    np.savez(tmp_path / "lines.npz", x=x)
    args = ["optimize", str(model), "--data", str(tmp_path / "lines.npz"), "--range", "agreement[axis=-1]>=0.99",
            "--candidates", "onnxruntime,ort-int8-static", "--trials", "0"]
    proc = run_kiln([*args, "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    for row in manifest["candidates"]:
        if row["metrics"]:
            result = row["metrics"]["agreement[axis=-1]"]
            assert result["range"] == ">= 0.99" and 0 <= result["worst_sample"] <= result["value"] <= 1, row
    assert _by_name(manifest)["onnxruntime"]["metrics"]["agreement[axis=-1]"]["worst_sample"] == 1.0
    saved = Path(kiln_env["KILN_STORE"]) / manifest["name"] / manifest["id"] / "program" / "program.py"
    assert "kiln.metrics.agreement(at_least=0.99, axis=-1, name='agreement[axis=-1]')" in saved.read_text()
    proc = run_kiln(["optimize", str(model), "--data", str(tmp_path / "lines.npz"), "--range",
                     "agreement[axis=2]>=0.99", "--candidates", "onnxruntime"], kiln_env)
    assert proc.returncode == 2 and "count the axis from the end" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_dataset_too_small_to_split(kiln_env, tmp_path, digits_program):
    prog = tmp_path / "tiny"
    shutil.copytree(digits_program, prog)
    data = dict(np.load(prog / "digits.npz"))
    data["x_test"], data["y_test"] = data["x_test"][:1], data["y_test"][:1]
    np.savez(prog / "digits.npz", **data)
    before = store_snapshot(Path(kiln_env["KILN_STORE"]))
    proc = run_kiln(["optimize", str(prog), "--candidates", "onnxruntime,ort-int8-static"], kiln_env)
    assert proc.returncode == 2 and "too few to split" in proc.stderr and "Traceback" not in proc.stderr
    assert store_snapshot(Path(kiln_env["KILN_STORE"])) == before


def test_small_cnn_candidates_and_served_settings(kiln_env, tmp_path):
    """A small CNN calibrated on synthetic data: every candidate is measured and gated, and the published
    artifact runs with the winner's backend and session settings, in kiln.load and in the server."""
    import kiln
    from kiln.client import connect

    import onnx_models
    from conftest import Served

    prog = tmp_path / "cnn"
    prog.mkdir()
    onnx_models.small_cnn(prog / "model.onnx")
    (prog / "program.py").write_text(
        "import kiln\nfrom kiln import metrics\n\nclass SmallCNN(kiln.ModelProgram):\n"
        "    synthetic_samples = 16\n    calibrate_on_synthetic = True\n"
        "    metrics = [metrics.agreement(at_least=0.8), metrics.cosine(at_least=0.99)]\n")
    # a tiny model: its candidates differ by noise, so a winner would not survive the confirmation rounds; a
    # gain only int8 on a real model reaches makes the published one the baseline, whose settings are served
    proc = run_kiln(["optimize", str(prog), "--candidates", INT8 + ",ort-fp32-1thread", "--min-gain", "0.5",
                     "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    cands = _by_name(manifest)
    assert cands["ort-fp32-1thread"]["settings"]["threads"] == 1
    assert all(c["latency_ms"] for c in cands.values())  # all built (static int8 on synthetic calibration)
    assert cands["ort-int8-static"]["settings"]["calibration_feeds"] > 0
    winner = cands[manifest["selected"]]
    assert manifest["settings"] == winner["settings"] and manifest["backend"] == winner["backend"]
    folder = Path(kiln_env["KILN_STORE"]) / "cnn" / manifest["id"]
    level = {"all": "ORT_ENABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED"}
    options = kiln.load(folder).runner.session.get_session_options()
    assert options.graph_optimization_level.name == level[winner["settings"].get("optimization", "all")]
    assert options.intra_op_num_threads == winner["settings"]["threads"]
    served = Served(folder)
    try:
        x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
        with connect(served.address) as client:
            got = client.infer({"x": x})["logits"]
        np.testing.assert_allclose(got, kiln.load(folder).run({"x": x})["logits"], rtol=1e-5, atol=1e-6)
    finally:
        served.stop()


def test_calibration_methods_and_gemm_rewrite(tmp_path):
    """Static int8 with each calibration method; dynamic int8 sees Gemm as MatMul+Add and never touches Conv."""
    import onnx

    from kiln.errors import KilnError
    from kiln.optimize import candidates

    import onnx_models

    model = onnx_models.small_cnn(tmp_path / "cnn.onnx")
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 3, 32, 32)).astype(np.float32)} for i in range(4)]
    for method in ("minmax", "entropy", "percentile"):
        out = tmp_path / method
        out.mkdir()
        ctx = candidates.BuildContext(model=model, prepared=model, out_dir=out, calibration=calib,
                                      calibration_method=method)
        built = candidates.get("ort-int8-static").build(ctx)
        assert method in built.settings.quantization
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(built.path)).graph.node)
    ctx.calibration_method = "guess"
    with pytest.raises(KilnError, match="unknown calibration method 'guess'"):
        candidates.get("ort-int8-static").build(ctx)
    dyn = candidates.get("ort-int8-dynamic").build(candidates.BuildContext(model=model, prepared=model,
                                                                           out_dir=tmp_path))
    ops = {n.op_type for n in onnx.load(str(dyn.path)).graph.node}
    assert "Gemm" not in ops and "Conv" in ops and "ConvInteger" not in ops and "MatMulInteger" in ops


def test_histogram_calibration_on_lines_of_different_widths(tmp_path):
    """Percentile and entropy calibration work on feeds of different shapes (text lines of their own widths):
    onnxruntime's histogram calibrators stack every feed's tensors at once and fail on ragged ones."""
    import onnx
    import onnxruntime as ort

    from kiln.optimize import candidates

    import onnx_models

    model = onnx_models.line_recognizer(tmp_path / "rec.onnx")
    widths = [16, 24, 40, 16, 32, 24]
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 3, 8, w)).astype(np.float32)}
             for i, w in enumerate(widths)]
    fp32 = ort.InferenceSession(str(model))
    for method in ("percentile", "entropy"):
        out = tmp_path / method
        out.mkdir()
        built = candidates.get("ort-int8-static").build(candidates.BuildContext(
            model=model, prepared=model, out_dir=out, calibration=calib, calibration_method=method))
        assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(built.path)).graph.node)
        int8 = ort.InferenceSession(str(built.path))
        for feed in calib[:3]:
            want, got = fp32.run(None, feed)[0], int8.run(None, feed)[0]
            assert got.shape == want.shape
            assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95, method


def test_calibrated_ranges_are_reused_by_later_quantizations(tmp_path):
    """Accuracy-aware retries quantize one model many times with different nodes excluded: the ranges are
    calibrated once per set of operator types and read back, giving the same model as calibrating again."""
    import onnx

    from kiln.optimize import candidates
    from kiln.optimize.candidates.ort_int8_static import quantize_qdq, ranges_folder

    import onnx_models

    model = onnx_models.line_recognizer(tmp_path / "rec.onnx")
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 3, 8, 16 + 8 * i)).astype(np.float32)}
             for i in range(4)]
    for method in ("minmax", "percentile"):
        ctx = candidates.BuildContext(model=model, prepared=model, out_dir=tmp_path, calibration=calib,
                                      calibration_method=method)
        ranges = ranges_folder(ctx)
        for ops in (None, ["Conv", "MatMul"]):
            quantize_qdq(ctx, model, tmp_path / "first.onnx", [], ops, ranges)
            quantize_qdq(ctx, model, tmp_path / "reused.onnx", ["classes"], ops, ranges)
            quantize_qdq(ctx, model, tmp_path / "fresh.onnx", ["classes"], ops)
            assert onnx.load(tmp_path / "reused.onnx").graph == onnx.load(tmp_path / "fresh.onnx").graph
        cached = ranges / f"rec-all-{method}.json"  # read back, not calibrated again: altered ranges show
        saved = json.loads(cached.read_text())
        for tensor in saved["data"].values():
            for end in ("lowest", "highest"):  # a number, or a numpy array as {"data": ...}
                value = tensor[end]
                tensor[end] = {**value, "data": np.multiply(value["data"], 4).tolist()} if isinstance(value, dict) \
                    else 4 * value
        cached.write_text(json.dumps(saved))
        quantize_qdq(ctx, model, tmp_path / "reused.onnx", ["classes"], None, ranges)
        assert onnx.load(tmp_path / "reused.onnx").graph != onnx.load(tmp_path / "fresh.onnx").graph
        assert sorted(p.name for p in ranges.iterdir()) == [f"rec-Conv-MatMul-{method}.json",
                                                             f"rec-all-{method}.json"]
        assert not any(ranges_folder(ctx).iterdir())  # a new build starts without them


def _bare(tmp_path: Path, name: str, build, samples: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    build(folder / "model.onnx")
    np.savez(tmp_path / f"{name}.npz", **samples)
    return folder / "model.onnx"


def test_transformer_fusion_on_a_bert_shaped_graph(kiln_env, tmp_path, digits_program):
    """A BERT-shaped export (embeddings, masked attention, erf-gelu, layer norms) is fused by onnxruntime's
    transformer optimizer; the fused fp32 and int8 candidates are built, measured and gated like any other.
    A model that is not a transformer gets them skipped with the reason."""
    import onnx_models

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (30, 1, 16))
    mask = np.ones_like(ids)
    mask[::3, :, 12:] = 0  # some padded sentences
    model = _bare(tmp_path, "tiny-bert", onnx_models.tiny_bert,
                  {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    shapes = [a for n in ("input_ids", "attention_mask", "token_type_ids") for a in ("--shape", f"{n}=1x16")]
    proc = run_kiln(["optimize", str(model), *shapes, "--data", str(tmp_path / "tiny-bert.npz"), "--range",
                     "cosine>=0.99", "--candidates", "onnxruntime,ort-fp32-fused,ort-int8-fused-dynamic,"
                     "ort-int8-fused-smooth,ort-int8-fused-static", "--trials", "0", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    cands = _by_name(json.loads(proc.stdout))
    fused = cands["ort-fp32-fused"]
    assert "2 Attention" in fused["settings"]["fusion"] and "EmbedLayerNormalization" in fused["settings"]["fusion"]
    assert fused["passed"] and fused["metrics"]["cosine"]["value"] > 0.9999  # the same function, fused
    from kiln.cpu import Int8Scheme, detected_int8_isa

    scheme = Int8Scheme.for_isa(detected_int8_isa())
    for name in ("ort-int8-fused-dynamic", "ort-int8-fused-smooth", "ort-int8-fused-static"):
        assert cands[name]["latency_ms"] and "cosine" in cands[name]["metrics"], cands[name]["reasons"]
        assert "fused graph" in cands[name]["settings"]["quantization"]
        assert scheme.label in cands[name]["settings"]["quantization"]  # the CPU's int8 scheme, recorded
        assert cands[name]["settings"]["int8_isa"] == scheme.isa
        # accurate, not only run: the row itself or one of its accuracy-aware fallbacks is inside cosine >= 0.99
        family = [c for n, c in cands.items() if n == name or n.startswith(f"{name}-fallback")]
        assert any(c["passed"] for c in family), {n: c["metrics"]["cosine"]["value"] for n, c in cands.items()}
    # alpha chosen by the program's own range on the calibration split
    assert "headroom used" in cands["ort-int8-fused-smooth"]["settings"]["quantization"]

    proc = run_kiln(["optimize", str(digits_program), "--candidates", "onnxruntime,ort-fp32-fused", "--trials", "0",
                     "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    skipped = _by_name(json.loads(proc.stdout))["ort-fp32-fused"]
    assert skipped["reasons"] == ["skipped: not a transformer: no attention (Softmax between MatMuls) with layer "
                                  "norms in the graph"]


def test_accuracy_aware_int8_keeps_the_sensitive_node_in_fp32(kiln_env, tmp_path):
    """One layer reads an activation with an outlier that per-tensor int8 cannot represent: quantizing all of
    the model misses the range; the fallback ranks the nodes on the calibration split, keeps that one node
    (and, for QDQ, the producer that would requantize its input) in fp32, and passes."""
    import onnx_models

    x = np.random.default_rng(0).standard_normal((60, 1, 64)).astype(np.float32)
    model = _bare(tmp_path, "sensitive", onnx_models.sensitive_mlp, {"x": x})
    proc = run_kiln(["optimize", str(model), "--data", str(tmp_path / "sensitive.npz"), "--range", "cosine>=0.99",
                     "--candidates", "onnxruntime,ort-int8-dynamic,ort-int8-static", "--trials", "0", "--json"],
                    kiln_env)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    cands = _by_name(manifest)
    for name in ("ort-int8-dynamic", "ort-int8-static"):
        assert not cands[name]["passed"] and cands[name]["metrics"]["cosine"]["value"] < 0.9
        retry = cands[f"{name}-fallback1" if name == "ort-int8-dynamic" else f"{name}-fallback2"]
        assert retry["settings"]["kept_fp32"][0] == "mm2", retry["settings"]
        assert retry["settings"]["calibration_check"] == "inside every range"
        assert retry["passed"] and retry["metrics"]["cosine"]["value"] >= 0.99  # and on the evaluation split
    assert cands["ort-int8-dynamic-fallback1"]["settings"]["kept_fp32"] == ["mm2"]
    # QDQ's first retry quantizes the matmuls only (the Add between them stays fp32): mm2 still reads the spike
    compute = cands["ort-int8-static-fallback1"]["settings"]
    assert compute["quantized_ops"] == ["Conv", "ConvTranspose", "MatMul", "Gemm"] and not compute["kept_fp32"]
    assert compute["calibration_check"].startswith("cosine = ")
    assert cands["ort-int8-static-fallback2"]["settings"]["kept_fp32"] == ["mm2"]
    if manifest["selected"].endswith(("dynamic-fallback1", "fallback2")):  # it records which nodes stayed fp32
        assert manifest["settings"]["kept_fp32"]


def test_static_int8_retries_with_the_compute_operators_only(kiln_env, tmp_path):
    """An outlier is added and subtracted again between two matmuls: QDQ of every operator stores the value
    between the Add and the Sub in int8 at a scale that rounds the rest away, while the matmuls' own inputs
    quantize well. The first retry quantizes Conv/MatMul/Gemm only and passes with no node kept in fp32."""
    import onnx_models

    x = np.random.default_rng(0).standard_normal((60, 1, 64)).astype(np.float32)
    model = _bare(tmp_path, "restored", lambda p: onnx_models.sensitive_mlp(p, restored=True), {"x": x})
    proc = run_kiln(["optimize", str(model), "--data", str(tmp_path / "restored.npz"), "--range", "cosine>=0.99",
                     "--candidates", "onnxruntime,ort-int8-static", "--trials", "0", "--json"], kiln_env)
    assert proc.returncode == 0, proc.stderr
    cands = _by_name(json.loads(proc.stdout))
    assert not cands["ort-int8-static"]["passed"] and cands["ort-int8-static"]["metrics"]["cosine"]["value"] < 0.9
    retry = cands["ort-int8-static-fallback1"]
    assert retry["settings"]["quantized_ops"] == ["Conv", "ConvTranspose", "MatMul", "Gemm"]
    assert not retry["settings"]["kept_fp32"] and retry["settings"]["calibration_check"] == "inside every range"
    assert retry["passed"] and retry["metrics"]["cosine"]["value"] >= 0.99
    assert "ort-int8-static-fallback2" not in cands  # nothing more to retry
