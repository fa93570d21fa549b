"""int8 that is right on every CPU kiln meets, checked on an emulated AMD EPYC znver3 (AVX2, no AVX-512, no
VNNI) where the CI machine has another CPU: qemu-user runs one Python process on a CPU model whose CPUID says
AVX2 only, so onnxruntime dispatches to its AVX2 kernels and their int16 saturation is emulated exactly."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

QEMU = shutil.which("qemu-x86_64")
HERE = Path(__file__).parent


def _on_cpu(cpu_model: str, out: Path, **env: str) -> dict:
    proc = subprocess.run([QEMU, "-cpu", cpu_model, sys.executable, str(HERE / "int8_on_cpu.py"), str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(HERE), **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_int8_on_an_avx2_cpu_is_exact_and_passes(tmp_path):
    """On znver3, kiln detects AVX2, quantizes its weights to uint8 (exact u8 x u8 kernels) and the
    accuracy-aware fallback passes after keeping the one sensitive node, as on a VNNI machine. Forcing the
    U8S8 weights a VNNI machine gets (KILN_INT8_ISA) reproduces what the suite saw on a real znver3: the
    saturating kernels leave the static QDQ model outside the range (cosine ~0.98) with the same node kept."""
    if QEMU is None:
        pytest.fail("qemu-x86_64 is missing: install Debian's qemu-user (make system-deps does)")
    chosen = _on_cpu("EPYC-Milan", tmp_path / "auto")
    assert chosen["detected"] == "avx2", chosen
    for name, row in chosen["candidates"].items():
        assert row["scheme"] == "U8U8" and row["isa"] == "avx2", (name, row)
        first = row["rounds"][0]
        assert first["check"] == "inside every range", (name, row)
        assert "mm2" in first["kept_fp32"], (name, row)

    forced = _on_cpu("EPYC-Milan", tmp_path / "u8s8", KILN_INT8_ISA="avx512-vnni")
    static = forced["candidates"]["ort-int8-static"]
    assert static["scheme"] == "U8S8"
    assert static["rounds"][0]["kept_fp32"] == chosen["candidates"]["ort-int8-static"]["rounds"][0]["kept_fp32"]
    assert static["rounds"][0]["check"].startswith("cosine = 0.9"), static  # saturated, outside the range


def test_the_host_cpu_is_detected_as_numpy_sees_it():
    """The ISA kiln records comes from CPUID (numpy's dispatch table); a VNNI or AMX host keeps U8S8."""
    from numpy._core._multiarray_umath import __cpu_features__ as cpuid

    from kiln.cpu import Int8Scheme, detected_int8_isa, u8s8_exact

    isa = detected_int8_isa()
    assert u8s8_exact(isa) == bool(cpuid.get("AVX512VNNI") or isa in ("amx", "avx-vnni"))
    assert Int8Scheme.for_isa(isa).u8_weights == (not u8s8_exact(isa))
