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


def test_two_names_for_one_cpu_are_one_target_and_several_make_a_fleet():
    from kiln.optimize.request import OptimizeRequest

    assert [t.name for t in parse_all(["c6i", "c6i.4xlarge", "host", "llvm"])] == ["c6i", "host"]
    assert OptimizeRequest.of(program="m.onnx", target="llvm").targets == ["host"]  # recorded requests load
    assert OptimizeRequest.of(program="m.onnx", targets=["c6i.2xlarge"]).target == "c6i"
    assert OptimizeRequest.of(program="m.onnx", targets="x86-64-v3, x86-64-v4,x86-64-v3").targets == \
        ["x86-64-v3", "x86-64-v4"]  # the web form's comma-separated field
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
    from kiln.optimize.plan import target_names
    from kiln.optimize.request import OptimizeRequest

    v3, ice = resolve("x86-64-v3"), resolve("icelake-server")
    assert (Int8Scheme.for_target(v3).label, Int8Scheme.for_target(ice).label) == ("U8U8", "U8S8")
    assert "avx2" in int8_intrinsic("tvm-int8-dynamic", v3) and "vnni" in int8_intrinsic("tvm-int8-dynamic", ice)
    assert int8_intrinsic("tvm", v3) is None
    checked = CheckedProgram.model_construct(targets=[])
    monkeypatch.setenv("KILN_INT8_ISA", "avx2")
    assert target_names(OptimizeRequest(program="m.onnx"), checked) == ["x86-64-v3"]
    assert target_names(OptimizeRequest(program="m.onnx", targets=["znver4"]), checked) == ["znver4"]
    assert target_names(OptimizeRequest(program="m.onnx"), checked.model_copy(update={"targets": ["c6i"]})) == ["c6i"]
    monkeypatch.setenv("KILN_INT8_ISA", "auto")
    assert target_names(OptimizeRequest(program="m.onnx"), checked) == ["host"]


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
        p = load(folder)
        seen[folder] = {"build": p.manifest.builds[0].target.name, "logits": p.run(feed)["logits"].tolist()}
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
    """One artifact for a fleet (--target x86-64-v2 --target x86-64-v3) and one for x86-64-v4, TVM builds
    cross-compiled here (--select tvm: published however fast; --trials 0). Each CPU loads the most capable build
    it runs: an emulated Intel Nehalem (SSE4.2, no AVX) the v2 build, an emulated AMD EPYC Milan (AVX2, no AVX-512)
    the v3 build, with the host's outputs; on EPYC Milan the v4 artifact is refused before its library is opened,
    naming the target and the flags it lacks. A host without AVX-512 cannot judge the v4 build: it is kept but not
    published, and the run says why."""
    from kiln.runtime.cpu_flags import this_cpu

    model = onnx_models.small_cnn(tmp_path / "cnn.onnx", size=16)
    env = {**kiln_env, "KILN_HOPELESS_SLOWDOWN": "0"}
    store = Path(kiln_env["KILN_STORE"])
    select = ["--candidates", "onnxruntime,tvm", "--trials", "0", "--select", "tvm", "--json"]
    proc = run_kiln(["optimize", str(model), *select, "--target", "x86-64-v3", "--target", "x86-64-v2",
                     "--name", "cnn-fleet"], env)
    assert proc.returncode == 0, proc.stderr
    fleet = json.loads(proc.stdout)
    builds = {b["target"]["name"]: b for b in fleet["builds"]}
    assert [b["target"]["name"] for b in fleet["builds"]] == ["x86-64-v2", "x86-64-v3"]  # least demanding first
    for name, build in builds.items():
        assert (build["selected"], build["backend"]) == ("tvm", "tvm") and "standing in for " + name in build["judged"]
        assert build["model"]["path"] == f"builds/{name}/model.so" and build["candidates"], build
        assert any("chosen by --select" in r for r in next(c for c in build["candidates"]
                                                              if c["name"] == "tvm")["reasons"])
    assert fleet["model"] == builds["x86-64-v2"]["model"]  # readers from before fleets load the v2 build
    assert "avx2" in builds["x86-64-v3"]["requires"] and "avx2" not in builds["x86-64-v2"]["requires"]
    folders = {"fleet": store / "cnn-fleet" / fleet["id"]}
    v3_so = folders["fleet"] / "builds" / "x86-64-v3" / "model.so"
    v3_code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(v3_so)], capture_output=True, text=True,
                             check=True).stdout
    assert "zmm" not in v3_code and "%k1" not in v3_code and "vpdpbusd" not in v3_code  # no AVX-512 register, VNNI
    assert "ymm" in v3_code  # AVX2 code: the v3 build is not the v2 one

    proc = run_kiln(["optimize", str(model), *select, "--target", "x86-64-v4", "--name", "cnn-v4"], env)
    if "avx512f" in this_cpu().flags:
        assert proc.returncode == 0, proc.stderr
        folders["v4"] = store / "cnn-v4" / json.loads(proc.stdout)["id"]
    else:
        assert proc.returncode == 1 and "built for x86-64-v4 but not judged: this host lacks" in proc.stderr, \
            proc.stderr
    # a CPU above this one (here: the first LLVM CPU with a flag this host lacks): compiled, never shipped untested
    from kiln.compiler.targets import resolve
    from kiln.targets.catalog import LLVM_CPUS

    above = next(t for t in map(resolve, reversed(LLVM_CPUS)) if not set(t.requires) <= this_cpu().flags)
    proc = run_kiln(["optimize", str(model), *select, "--target", above.name, "--name", "cnn-above"], env)
    assert proc.returncode == 1 and f"built for {above.name} but not judged: this host lacks" in proc.stderr, \
        proc.stderr
    assert "nothing was published" in proc.stderr and not (store / "cnn-above").exists()

    feed = tmp_path / "feed.npy"
    np.save(feed, np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32))
    order = list(folders.values())
    here = _load_on(None, feed, order)
    milan = _load_on("EPYC-Milan", feed, order)
    nehalem = _load_on("Nehalem", feed, order[:1])
    assert "avx2" in milan["flags"] and "avx512f" not in milan["flags"] and "avx" not in nehalem["flags"]
    fleet_at = str(folders["fleet"])
    assert (here[fleet_at]["build"], milan[fleet_at]["build"], nehalem[fleet_at]["build"]) == \
        ("x86-64-v3", "x86-64-v3", "x86-64-v2")
    for there in (milan, nehalem):
        np.testing.assert_allclose(there[fleet_at]["logits"], here[fleet_at]["logits"], rtol=1e-5, atol=1e-5)
    if "v4" in folders:
        refusal = milan[str(folders["v4"])]
        assert refusal.startswith("refused: ") and "was built for x86-64-v4" in refusal, refusal
        assert "avx512f" in refusal and "--target host" in refusal, refusal
        assert here[str(folders["v4"])]["build"] == "x86-64-v4"  # the host runs it


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
    assert cpu_flags.for_this_cpu(old) is old  # nothing recorded: loads as before
    v3 = Manifest.model_validate({**OLD, "request": {"program": "m.onnx", "targets": ["x86-64-v3"]}, "builds": [
        {"target": {"name": "x86-64-v3", "mcpu": "x86-64-v3"}, "selected": "tvm", "backend": "tvm",
         "requires": ["avx2", "fma", "movbe"]}]})
    assert request_for(Path("/a"), v3, "/a/program").targets == ["x86-64-v3"]
    assert request_for(Path("/a"), v3, "/a/program", targets=["znver4"]).targets == ["znver4"]
    monkeypatch.setattr(cpu_flags, "this_cpu", lambda: cpu_flags.CpuFlags(frozenset({"sse2", "avx2"}), "test"))
    with pytest.raises(TargetError, match=r"m v3 was built for x86-64-v3 .*x86-64-v3: lacks fma, movbe"):
        cpu_flags.for_this_cpu(v3)
    monkeypatch.setattr(cpu_flags, "this_cpu", lambda: cpu_flags.CpuFlags(frozenset({"avx2", "fma", "movbe"}), "t"))
    cpu_flags.for_this_cpu(v3)


def test_a_target_above_this_host_is_judged_on_an_emulated_cpu(tmp_path, kiln_home, monkeypatch):
    """On a host without AVX2 (this CPU's flags cut down to an x86-64-v2 one's here: the stages run in this
    process), an x86-64-v3 TVM build cannot run, but qemu emulates a CPU that can: its accuracy is judged there,
    its speed is not measured, so it does not win over onnxruntime and --select refuses it with the reason. A v4
    build run on the same emulated CPU stops with SIGILL and is named failed, so the emulation is no stand-in."""
    from kiln.artifact.manifest import BASELINE, RunSettings
    from kiln.compiler.targets import resolve
    from kiln.errors import GateError
    from kiln.optimize import build, compile, confirm, evaluate, judging, prepare, reference, validate
    from kiln.optimize import plan as planning
    from kiln.optimize.request import OptimizeRequest
    from kiln.runtime import cpu_flags

    if QEMU is None:
        pytest.fail("qemu-x86_64 is missing: install Debian's qemu-user (make system-deps does)")
    v2 = cpu_flags.CpuFlags(frozenset(resolve("x86-64-v2").requires), "cpuid")
    monkeypatch.setattr(judging, "this_cpu", lambda: v2)
    monkeypatch.setenv("KILN_HOME", str(kiln_home))
    model = onnx_models.small_cnn(tmp_path / "cnn.onnx", size=16)

    def stages(target: str, select: str | None = None):
        request = OptimizeRequest(program=str(model), candidates=[BASELINE, "tvm"], trials=0, targets=[target],
                                  select=select, latency_repeats=20, store=str(tmp_path / "store"),
                                  compare_with_current=False)
        checked = validate.validate(request.program, request.shapes, request.chosen, request.name)
        plan = planning.plan(request, checked)
        prepared = prepare.prepare(checked)
        ref = reference.reference(checked, plan.threads, plan.calibrate)
        built = build.build_candidates(checked, prepared, ref, plan.transforms, target=plan.target)
        built.append(compile.compile_tvm(checked, compile.job(checked, prepared, plan, "tvm", None), plan))
        return checked, ref, plan, built

    checked, ref, plan, built = stages("x86-64-v3")
    assert "avx2" in plan.judging.lacking and plan.judging.emulator in ("Haswell-noTSX", "EPYC-Milan")
    assert built[-1].emulator == plan.judging.emulator and built[-1].error is None
    evaluation = evaluate.evaluate(checked, ref, built, plan.threads, 20)
    tvm = next(c for c in evaluation.candidates if c.name == "tvm")
    assert tvm.metrics and tvm.passed, tvm.reasons  # the v3 build ran on the emulated CPU, inside every range
    assert tvm.latency_ms is None and any(r.startswith("speed not measured: this host lacks") and
                                          f"qemu-x86_64 -cpu {plan.judging.emulator}" in r for r in tvm.reasons)
    choice = confirm.choose(checked, ref, evaluation, plan)
    assert choice.selected.name == BASELINE and not tvm.eligible
    with pytest.raises(GateError, match="the selected candidate tvm cannot ship: .*speed not measured"):
        confirm.choose(checked, ref, evaluation, plan.model_copy(
            update={"request": plan.request.model_copy(update={"select": "tvm"})}))

    v4_built = stages("x86-64-v4")[3]  # not judged on this "host" (qemu emulates no AVX-512): kept, with its path
    sigill = v4_built[-1].model_copy(update={"emulator": plan.judging.emulator, "error": None})
    row = evaluate.emulated(checked, ref, sigill, RunSettings(threads=1), {"timeout": 60})
    assert row.reasons[0].startswith("failed to run: was killed by SIGILL on qemu's " + plan.judging.emulator) \
        and "Illegal instruction" in row.reasons[0] and not row.passed, row.reasons


def test_a_cpu_known_only_by_its_flags_gets_the_closest_llvm_cpu_minus_what_it_lacks():
    """A device reports CPUID flags, not LLVM's name for its CPU: the target is the LLVM CPU that has most of
    them, minus any feature it implies that the device lacks, so no build for it uses an instruction it cannot
    run; on this host's own flags it requires exactly what `host` does."""
    from kiln.compiler.targets import for_flags, resolve
    from kiln.runtime.cpu_flags import this_cpu

    here = for_flags("edge1", this_cpu().flags, "device edge1")
    assert set(here.requires) == set(resolve("host").requires) and set(here.requires) <= this_cpu().flags
    for level, lacks in (("x86-64-v2", "avx"), ("x86-64-v3", "avx512f")):
        flags = set(resolve(level).requires)
        cpu = for_flags("d", flags, "device d")
        assert set(cpu.requires) <= flags and lacks not in cpu.requires and cpu.mcpu != "x86-64"
    assert "avx2" in for_flags("d", set(resolve("x86-64-v3").requires), "d").requires
