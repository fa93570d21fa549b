"""Runners: one object per loaded model with `run(feed) -> outputs`, for each backend.

Like Triton's python backend lifecycle: construction loads (initialize), `run` executes, `close` frees.
The TVM runner loads `libtvm_runtime.so` only (TVM_USE_RUNTIME_LIB=1), never the 259 MB compiler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from kiln.artifact.manifest import RunSettings
from kiln.artifact.specs import Profile, TensorSpec
from kiln.config import environ_default, environ_set


class Runner(Protocol):
    backend: str

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class OrtRunner:
    """onnxruntime InferenceSession with explicit thread and graph-optimization settings."""

    backend = "onnxruntime"

    def __init__(self, model_path: Path, threads: int | None = None, optimization: str = "all",
                 spin: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[optimization]
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not spin:  # idle intra-op threads would otherwise spin and steal the cores a server needs
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


ALIGNMENT = 64  # TVM refuses DLPack tensors whose data is not 64-byte aligned


def _aligned(arr: np.ndarray) -> np.ndarray:
    """`arr` itself when C-contiguous and 64-byte aligned, else an aligned copy."""
    if arr.flags.c_contiguous and arr.ctypes.data % ALIGNMENT == 0:
        return arr
    raw = np.empty(arr.nbytes + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    out = raw[offset : offset + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def _import_tvm_runtime():
    """Import tvm with only its runtime library, unless tvm (maybe with its compiler) is already loaded.

    The variable is set only around the first import and then restored: a flow process that later tunes
    spawns MetaSchedule builder workers, which inherit the environment and must load the compiler.
    """
    import sys

    if "tvm" not in sys.modules:
        with environ_set("TVM_USE_RUNTIME_LIB", "1"):
            import tvm  # noqa: F401
    import tvm
    import tvm.runtime.vm  # noqa: F401  (registers the Relax VM)

    return tvm


class TvmRunner:
    """A Relax VM over an exported `model.so` (weights embedded), inputs in the graph's order."""

    backend = "tvm"

    def __init__(self, module_path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 threads: int | None = None, device: str = "cpu"):
        if threads:  # read once, when TVM's thread pool starts (an earlier TVM_NUM_THREADS is left as it is)
            environ_default("TVM_NUM_THREADS", str(threads))
        tvm = _import_tvm_runtime()
        self._tvm = tvm
        self.on_cpu = device != "cuda"
        self.device = tvm.cpu() if self.on_cpu else tvm.cuda()
        self.module = tvm.runtime.load_module(str(module_path))
        self.vm = tvm.runtime.vm.VirtualMachine(self.module, self.device)
        self.main = self.vm["main"]
        self.input_names = [s.name for s in inputs]
        self.output_names = [s.name for s in outputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.on_cpu:  # CPU: share memory with numpy both ways (DLPack), no copies
            args = [self._tvm.runtime.from_dlpack(_aligned(feed[n])) for n in self.input_names]
            result = self.main(*args)
            values = [result] if hasattr(result, "numpy") else list(result)
            return {n: np.from_dlpack(v) for n, v in zip(self.output_names, values, strict=True)}
        args = [self._tvm.runtime.tensor(np.asarray(feed[n], order="C"), self.device) for n in self.input_names]
        result = self.main(*args)
        values = [result] if hasattr(result, "numpy") else list(result)
        return {n: v.numpy() for n, v in zip(self.output_names, values, strict=True)}

    def close(self) -> None:
        self.main = self.vm = self.module = None  # type: ignore[assignment]


def open_runner(backend: str, path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec],
                settings: RunSettings | None = None, profile: Profile | None = None) -> Runner:
    """Load `path` for `backend` as `settings` say (threads, graph level, spinning, device); TVM builds per
    shape bucket (settings.buckets) need the profile their dimension is in (its pad values and output axes)."""
    settings = settings or RunSettings()
    if backend == "tvm" and settings.buckets:
        from kiln.runtime.buckets import BucketRunner

        names, buckets = settings.bucket_grid()
        dims = [profile.dim(n) for n in names] if profile else []
        if not names or not all(dims):
            raise ValueError(f"a TVM build per bucket of {' x '.join(names)!r} needs the profile that names it")
        device = settings.device or "cpu"
        return BucketRunner(path, dims, buckets, inputs, load=lambda module, specs:
                            TvmRunner(module, specs, outputs, threads=settings.threads, device=device))
    if backend == "onnxruntime":
        return OrtRunner(path, threads=settings.threads, optimization=settings.optimization or "all",
                         spin=True if settings.spin is None else settings.spin)
    if backend == "tvm":
        return TvmRunner(path, inputs, outputs, threads=settings.threads, device=settings.device or "cpu")
    raise ValueError(f"unknown backend {backend!r}")
