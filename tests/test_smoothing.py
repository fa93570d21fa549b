"""SmoothQuant on a BERT-shaped graph with outlier channels, as real transformers' hidden states have them."""

import numpy as np
import onnx
from onnx import numpy_helper


def _with_outliers(model_path, channels=(3, 17), size=30.0):
    """The layer norms' gain made large in a few channels: the activations the projections read get outliers."""
    model = onnx.load(str(model_path))
    for init in model.graph.initializer:
        if init.name.endswith("_ln.gamma"):
            gamma = numpy_helper.to_array(init).copy()
            gamma[list(channels)] = size
            init.CopyFrom(numpy_helper.from_array(gamma, init.name))
    onnx.save(model, str(model_path))
    return model_path


def _run(path, feeds):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def test_smoothing_keeps_the_function_and_cuts_int8_error(tmp_path):
    from kiln.optimize.candidates import BuildContext
    from kiln.optimize.candidates.ort_fused import _quantize_dynamic, fuse
    from kiln.optimize.quantize.smoothing import channel_ranges, smooth, smoothed_for_int8, targets

    import onnx_models

    model = _with_outliers(onnx_models.tiny_bert(tmp_path / "model.onnx", hidden=64, ffn=128))
    rng = np.random.default_rng(1)
    feeds = [{"input_ids": rng.integers(1, 100, (1, 16)), "attention_mask": np.ones((1, 16), np.int64),
              "token_type_ids": np.zeros((1, 16), np.int64)} for _ in range(12)]
    ctx = BuildContext(model=model, prepared=model, out_dir=tmp_path)
    fused, _ = fuse(ctx)
    found = targets(fused)
    read_by = {n.name: n.op_type for n in fused.graph.node}
    assert {read_by[r] for t in found for r in t.readers} == {"Attention", "MatMul"}

    smoothed, count, folded = smooth(fused, found, channel_ranges(fused, found, feeds), alpha=0.7)
    assert count == len(found) and folded == 2  # each layer's attention output scaled in its value projection
    onnx.save(fused, str(tmp_path / "fused.onnx"))
    onnx.save(smoothed, str(tmp_path / "smoothed.onnx"))
    reference = _run(tmp_path / "fused.onnx", feeds)
    np.testing.assert_allclose(_run(tmp_path / "smoothed.onnx", feeds), reference, rtol=1e-3, atol=1e-4)

    def error(path):
        return float(np.linalg.norm(_run(path, feeds) - reference) / np.linalg.norm(reference))

    _quantize_dynamic(ctx, tmp_path / "fused.onnx", tmp_path / "plain_int8.onnx", [])
    chosen, how = smoothed_for_int8(fused, feeds, tmp_path, lambda src, dest: _quantize_dynamic(ctx, src, dest, []))
    _quantize_dynamic(ctx, chosen, tmp_path / "smooth_int8.onnx", [])
    assert "SmoothQuant alpha" in how and "output error" in how
    plain, smoothed_error = error(tmp_path / "plain_int8.onnx"), error(tmp_path / "smooth_int8.onnx")
    assert smoothed_error < 0.5 * plain, (plain, smoothed_error)
