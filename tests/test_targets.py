"""Optimizing for the CPU the artifact runs on (--target): names, what each target's code requires, the int8
scheme and kernels that follow the target rather than the host, and the load-time check that refuses a build for
a CPU above this one by name (never SIGILL), proven on CPUs emulated by qemu-user."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kiln.errors import TargetError
from kiln.targets import parse, parse_all

import onnx_models
from conftest import run_kiln

QEMU = shutil.which("qemu-x86_64")
HERE = Path(__file__).parent


@pytest.mark.parametrize("name, form, mcpu", [
    ("host", "host", None), ("llvm", "host", None),  # the single `target` of earlier requests
    ("x86-64-v3", "level", "x86-64-v3"), ("ZNVER3", "llvm-cpu", "znver3"),
    ("skylake-avx512", "llvm-cpu", "skylake-avx512"), ("aws/cpu/c5.large", "tvm-tag", "skylake-avx512"),
    ("aws/cpu/c5.24xlarge", "tvm-tag", "cascadelake"), ("c6i", "instance", "icelake-server"),
    ("c6i.2xlarge", "instance", "icelake-server"), ("m7a", "instance", "znver4"), ("c6a.large", "instance", "znver3"),
    ("cuda", "cuda", None),
])
def test_target_names(name, form, mcpu):
    parsed = parse(name)
    assert (parsed.form, parsed.mcpu) == (form, mcpu)


@pytest.mark.parametrize("name, says", [
    ("znver9", "nearest: znver5, znver4"), ("skylake-avx", "nearest: skylake-avx512"), ("x86-64-v5", "x86-64-v4"),
    ("c7g", "not an x86-64 CPU"), ("graviton3", "aarch64 comes later"), ("nvidia/nvidia-a100", "use `cuda`"),
    ("quantum", "a psABI level (x86-64-v2"),
])
def test_a_bad_target_names_the_forms_and_the_nearest(name, says):
    with pytest.raises(TargetError) as caught:
        parse(name)
    assert says in caught.value.render(), caught.value.render()


def test_two_names_for_one_cpu_are_one_target_and_requests_take_one_for_now():
    from kiln.optimize.request import OptimizeRequest

    assert [t.name for t in parse_all(["c6i", "c6i.4xlarge", "host", "llvm"])] == ["c6i", "host"]
    assert OptimizeRequest.of(program="m.onnx", target="llvm").targets == ["host"]  # recorded requests load
    assert OptimizeRequest.of(program="m.onnx", targets=["c6i.2xlarge"]).target == "c6i"
    with pytest.raises(Exception, match="one artifact per target for now"):
        OptimizeRequest.of(program="m.onnx", targets=["x86-64-v3", "x86-64-v4"])
    with pytest.raises(Exception, match="not among the candidates"):
        OptimizeRequest.of(program="m.onnx", candidates=["onnxruntime", "tvm"], select="ort-int8-dynamic")


def test_the_name_list_is_llvms():
    """kiln's table of LLVM x86-64 CPUs (the request checks names without TVM) is the installed LLVM's."""
    import tvm
    from tvm.target import codegen

    from kiln.targets.catalog import LLVM_CPUS

    names = codegen.llvm_get_cpu_archlist(tvm.target.Target({"kind": "llvm"}))
    x86_64 = [n for n in names if "_" not in n and "64bit" in
              codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": n}))]
    assert sorted(LLVM_CPUS) == sorted(x86_64)


def test_what_a_targets_code_requires():
    from kiln.compiler.targets import resolve, target_config
    from kiln.runtime.cpu_flags import this_cpu

    v3, v4, milan = resolve("x86-64-v3"), resolve("x86-64-v4"), resolve("znver3")
    assert {"avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "f16c"} <= set(v3.requires)  # every x86-64-v3 flag
    assert not any(f.startswith("avx512") for f in v3.requires) and (v3.int8_isa, v3.vector_bits) == ("avx2", 256)
    assert {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= set(v4.requires)
    assert (v4.int8_isa, resolve("icelake-server").int8_isa, resolve("sapphirerapids").int8_isa) == \
        ("avx512", "avx512-vnni", "amx")
    assert milan.int8_isa == "avx2" and target_config(milan)["mcpu"] == "znver3"
    host = resolve("host")  # LLVM's name for this CPU, minus what this CPU's CPUID lacks
    assert set(host.requires) <= this_cpu().flags
    assert target_config(host)["mcpu"] == host.mcpu and target_config(host).get("mattr", []) == host.mattr


def test_the_int8_scheme_and_kernels_follow_the_target_not_the_host(monkeypatch):
    """An AVX2 fleet gets uint8 weights (u8 x s8 saturates without VNNI) and the AVX2 dot kernels, wherever kiln
    runs; a VNNI target gets U8S8 and vpdpbusd kernels. KILN_INT8_ISA, where no target is named, stands for the
    CPU it describes."""
    from kiln.compiler.targets import resolve
    from kiln.cpu import Int8Scheme
    from kiln.optimize.compile import int8_intrinsic
    from kiln.optimize.models import CheckedProgram
    from kiln.optimize.plan import target_name
    from kiln.optimize.request import OptimizeRequest

    v3, ice = resolve("x86-64-v3"), resolve("icelake-server")
    assert (Int8Scheme.for_target(v3).label, Int8Scheme.for_target(ice).label) == ("U8U8", "U8S8")
    assert "avx2" in int8_intrinsic("tvm-int8-dynamic", v3) and "vnni" in int8_intrinsic("tvm-int8-dynamic", ice)
    assert int8_intrinsic("tvm", v3) is None
    checked = CheckedProgram.model_construct(targets=[])
    monkeypatch.setenv("KILN_INT8_ISA", "avx2")
    assert target_name(OptimizeRequest(program="m.onnx"), checked) == "x86-64-v3"
    assert target_name(OptimizeRequest(program="m.onnx", targets=["znver4"]), checked) == "znver4"
    assert target_name(OptimizeRequest(program="m.onnx"), checked.model_copy(update={"targets": ["c6i"]})) == "c6i"
    monkeypatch.setenv("KILN_INT8_ISA", "auto")
    assert target_name(OptimizeRequest(program="m.onnx"), checked) == "host"


CHECK = """
import json, sys
import numpy as np
from kiln.errors import TargetError
from kiln.runtime.cpu_flags import this_cpu
from kiln.runtime.predictor import load
seen = {"flags": sorted(this_cpu().flags)}
feed = {"x": np.load(sys.argv[1])}
for folder in sys.argv[2:]:
    try:
        seen[folder] = load(folder).run(feed)["logits"].tolist()
    except TargetError as exc:
        seen[folder] = "refused: " + exc.render()
print(json.dumps(seen))
"""


def _load_on(cpu: str | None, feed: Path, folders: list[Path]) -> dict:
    """kiln.load of each artifact in one process, natively or on an emulated CPU (qemu-user, one process)."""
    if cpu and QEMU is None:
        pytest.fail("qemu-x86_64 is missing: install Debian's qemu-user (make system-deps does)")
    cmd = [*([QEMU, "-cpu", cpu] if cpu else []), sys.executable, "-c", CHECK, str(feed), *map(str, folders)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(HERE)})
    assert proc.returncode == 0, proc.stderr[-3000:]  # a SIGILL is -4 (132 in a shell), with no message
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_build_for_a_cpu_above_this_one_is_refused_by_name_never_sigill(tmp_path, kiln_env):
    """--target x86-64-v3 and x86-64-v4 TVM builds of one model, cross-compiled here (--select tvm: published
    however fast; --trials 0). On an emulated AMD EPYC Milan (AVX2, no AVX-512) the v4 artifact is refused before
    its library is opened, naming the target and the flags it lacks; the v3 one runs with the host's outputs. A
    host without AVX-512 cannot judge the v4 build: it is kept but not published, and the run says why."""
    from kiln.runtime.cpu_flags import this_cpu

    model = onnx_models.small_cnn(tmp_path / "cnn.onnx", size=16)
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "0"}
    folders = {}
    for target in ("x86-64-v3", "x86-64-v4"):
        proc = run_kiln(["optimize", str(model), "--candidates", "onnxruntime,tvm", "--trials", "0", "--select",
                         "tvm", "--target", target, "--name", f"cnn-{target}", "--json"], env)
        if target == "x86-64-v4" and "avx512f" not in this_cpu().flags:
            assert proc.returncode == 1 and "built for x86-64-v4 but not judged: this host lacks" in proc.stderr, \
                proc.stderr
            continue
        assert proc.returncode == 0, proc.stderr
        manifest = json.loads(proc.stdout)
        build = manifest["builds"][0]
        assert (manifest["selected"], build["target"]["name"], build["backend"]) == ("tvm", target, "tvm")
        assert "standing in for " + target in build["judged"], build
        assert any("chosen by --select" in r for r in next(c for c in manifest["candidates"]
                                                              if c["name"] == "tvm")["reasons"])
        folders[target] = Path(kiln_env["KILN_STORE"]) / f"cnn-{target}" / manifest["id"]
    # a CPU above this one (here: the first LLVM CPU with a flag this host lacks): compiled, never shipped untested
    from kiln.compiler.targets import resolve
    from kiln.targets.catalog import LLVM_CPUS

    above = next(t for t in map(resolve, reversed(LLVM_CPUS)) if not set(t.requires) <= this_cpu().flags)
    proc = run_kiln(["optimize", str(model), "--candidates", "onnxruntime,tvm", "--trials", "0", "--select", "tvm",
                     "--target", above.name, "--name", "cnn-above", "--json"], env)
    assert proc.returncode == 1 and f"built for {above.name} but not judged: this host lacks" in proc.stderr, \
        proc.stderr
    assert "nothing was published" in proc.stderr and not (Path(kiln_env["KILN_STORE"]) / "cnn-above").exists()

    v3 = folders["x86-64-v3"]
    assert "avx512f" not in json.loads((v3 / "manifest.json").read_text())["builds"][0]["requires"]
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(v3 / "model.so")], capture_output=True,
                          text=True, check=True).stdout
    assert "zmm" not in code and "%k1" not in code and "vpdpbusd" not in code  # no AVX-512 register or VNNI

    feed = tmp_path / "feed.npy"
    np.save(feed, np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32))
    order = list(folders.values())
    here = _load_on(None, feed, order)
    there = _load_on("EPYC-Milan", feed, order)
    assert "avx2" in there["flags"] and "avx512f" not in there["flags"]
    np.testing.assert_allclose(there[str(v3)], here[str(v3)], rtol=1e-6, atol=1e-6)
    if "x86-64-v4" in folders:
        refusal = there[str(folders["x86-64-v4"])]
        assert refusal.startswith("refused: ") and "was built for x86-64-v4" in refusal, refusal
        assert "avx512f" in refusal and "--target host" in refusal, refusal
        assert not isinstance(here[str(folders["x86-64-v4"])], str)  # the host runs it


OLD = {"name": "m", "created_at": "2026-01-01T00:00:00", "target": "llvm", "dataset": "d", "candidates": [],
       "selected": "tvm", "backend": "tvm", "speedup_vs_baseline": 1.0, "version": 3,
       "model": {"path": "model.so", "sha256": "0", "source_sha256": "0"}, "program": {"sha256": "0", "source": "p"},
       "inputs": [], "outputs": [], "request": {"program": "m.onnx", "target": "llvm", "trials": 8}}


def test_old_manifests_load_and_reoptimize_keeps_the_targets(monkeypatch):
    """An artifact published before targets (no `builds`, `target: llvm` in its request) loads as before and is
    re-optimized for this host; one built for x86-64-v3 is re-optimized for x86-64-v3 unless told otherwise. The
    refusal names the target and the flags (this CPU's flags fixed here; the real CPUs are in the qemu test)."""
    from flows.reoptimize import request_for
    from kiln.artifact.manifest import Manifest
    from kiln.runtime import cpu_flags

    old = Manifest.model_validate(OLD)
    assert old.builds == [] and request_for(Path("/a"), old, "/a/program").targets == ["host"]
    cpu_flags.refuse_if_unrunnable(old)  # nothing recorded: loads as before
    v3 = Manifest.model_validate({**OLD, "request": {"program": "m.onnx", "targets": ["x86-64-v3"]}, "builds": [
        {"target": {"name": "x86-64-v3", "mcpu": "x86-64-v3"}, "selected": "tvm", "backend": "tvm",
         "requires": ["avx2", "fma", "movbe"]}]})
    assert request_for(Path("/a"), v3, "/a/program").targets == ["x86-64-v3"]
    assert request_for(Path("/a"), v3, "/a/program", targets=["znver4"]).targets == ["znver4"]
    monkeypatch.setattr(cpu_flags, "this_cpu", lambda: cpu_flags.CpuFlags(frozenset({"sse2", "avx2"}), "test"))
    with pytest.raises(TargetError, match=r"m v3 was built for x86-64-v3 .*x86-64-v3: lacks fma, movbe"):
        cpu_flags.refuse_if_unrunnable(v3)
    monkeypatch.setattr(cpu_flags, "this_cpu", lambda: cpu_flags.CpuFlags(frozenset({"avx2", "fma", "movbe"}), "t"))
    cpu_flags.refuse_if_unrunnable(v3)
