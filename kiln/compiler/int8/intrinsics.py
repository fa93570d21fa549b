"""kiln's int8 dot-product tensor intrinsics for x86: u8 activations x s8 weights -> s32, one per instruction
set, registered with TVM under kiln's own names.

TVM 0.27 ships `dot_16x4_vnni` and `dot_16x4_avx512`, but its VNNI one no longer verifies under the LLVM 22 the
wheel is built with (`llvm.x86.avx512.vpdpbusd.512` now takes <64 x i8> operands: "Call parameter type does not
match function signature"), and it has none for AVX2. Each intrinsic here computes C[i] += sum_k A[k] * B[i, k]
over an (N_LANES x K_LANES) block of weights pre-packed as [N / N_LANES, K / K_LANES, N_LANES, K_LANES]
(kiln.compiler.int8.packing):

- `vnni` (AVX-512 VNNI, `vpdpbusd`): 16 x 4, exact int32 sums.
- `avx512` / `avx2` (`vpmaddubsw` then `vpmaddwd` by ones): 16 x 4 / 8 x 4. The u8 x s8 pair sums are int16
  and saturate (255 * 127 * 2 > 32767): fast, not exact. onnxruntime's kernels do this on CPUs without VNNI.
- `avx512-exact` / `avx2-exact` (both operands widened to int16, then `vpmaddwd`): 16 x 2 / 8 x 2, exact int32
  sums with half the lanes per instruction. No peer offers this choice; the gate judges accuracy and speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from kiln.errors import KilnError


@dataclass(frozen=True)
class Intrinsic:
    key: str  # kiln's name for the scheme (recorded in the manifest)
    n_lanes: int  # output columns per instruction block (weight rows of the packed layout)
    k_lanes: int  # reduction elements per column per block
    exact: bool  # int32 sums without saturation
    needs: tuple[str, ...]  # LLVM target features it uses
    what: str

    def peak_gops(self, cores: int, ghz: float | None, mcpu: str) -> float | None:
        """The kernel's ceiling on `cores` cores of LLVM CPU `mcpu` at `ghz` (kiln.compiler.int8.peak's table):
        what a task's GOP/s is a share of; None where the table has no sourced figure for that CPU."""
        from kiln.compiler.int8.peak import peak

        return peak(self.key, mcpu, cores, ghz).gops

    @property
    def tvm_name(self) -> str:
        return f"kiln_int8_{self.key.replace('-', '_')}_{self.n_lanes}x{self.k_lanes}"


INTRINSICS: dict[str, Intrinsic] = {i.key: i for i in (
    # their int8 ops per cycle depend on the microarchitecture, not on the instruction set: kiln.compiler.int8.peak
    Intrinsic("vnni", 16, 4, True, ("avx512vnni",), "AVX-512 VNNI vpdpbusd: u8 x s8 summed into int32"),
    Intrinsic("avx512", 16, 4, False, ("avx512bw",), "AVX-512 vpmaddubsw + vpmaddwd: int16 pair sums saturate"),
    Intrinsic("avx512-exact", 16, 2, True, ("avx512bw",), "AVX-512 widened to int16 + vpmaddwd: exact"),
    Intrinsic("avx2", 8, 4, False, ("avx2",), "AVX2 vpmaddubsw + vpmaddwd: int16 pair sums saturate"),
    Intrinsic("avx2-exact", 8, 2, True, ("avx2",), "AVX2 widened to int16 + vpmaddwd: exact, half lanes"),
)}


def get(key: str) -> Intrinsic:
    if key not in INTRINSICS:
        raise KilnError(f"unknown int8 intrinsic {key!r}", hint=f"choose from {', '.join(INTRINSICS)}")
    return INTRINSICS[key]


def for_cpu(isa: str, choice: str = "auto", saturating: bool = False) -> str | None:
    """The intrinsic kiln uses on a CPU whose best int8 instructions are `isa` (kiln.cpu.detected_int8_isa):
    the widest exact one by default, the widest saturating one (vpmaddubsw) with `saturating`; `choice` names one
    instead (refused where the CPU lacks its instructions). None: no int8 dot instruction kiln can use (SSE only)."""
    usable = {"amx": ("vnni", "avx512-exact", "avx512", "avx2-exact", "avx2"),
              "avx512-vnni": ("vnni", "avx512-exact", "avx512", "avx2-exact", "avx2"),
              "avx512": ("avx512-exact", "avx512", "avx2-exact", "avx2"),
              "avx-vnni": ("avx2-exact", "avx2"), "avx2": ("avx2-exact", "avx2")}.get(isa, ())
    if choice == "auto":
        return next((k for k in usable if INTRINSICS[k].exact != saturating), None)
    get(choice)
    if choice not in usable:
        raise KilnError(f"the int8 intrinsic {choice!r} needs {', '.join(get(choice).needs)}, which this CPU "
                        f"({isa}) lacks", hint=f"KILN_INT8_INTRINSIC=auto, or one of {', '.join(usable) or 'none'}")
    return choice


def _desc(n: int, k: int):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((k,), "uint8", offset_factor=1), B: T.Buffer((n, k), "int8", offset_factor=1),
             C: T.Buffer((n,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:n], A[0:k], B[0:n, 0:k])
            T.writes(C[0:n])
            for i in T.serial(0, n):
                for j in T.serial(0, k):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, j])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _impl_vnni():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), 16), dtype="int8x64")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"), a,
                B.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    return impl


def _impl_maddubs(n: int, bits: int, madd_ub: str, madd_wd: str):
    """vpmaddubsw (u8 x s8 pairs into saturating int16) then vpmaddwd by ones (int16 pairs into int32)."""
    from tvm.script import tirx as T

    lanes8, lanes16 = 4 * n, 2 * n

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((n, 4), "int8", offset_factor=1),
             C: T.Buffer((n,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:n], A[0:4], B[0:n, 0:4])
            T.writes(C[0:n])
            a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"), n),
                              dtype=f"uint8x{lanes8}")
            pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(madd_ub), a,
                                            B.vload([0, 0], dtype=f"int8x{lanes8}"), dtype=f"int16x{lanes16}")
            C[T.ramp(T.int32(0), 1, n)] += T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(madd_wd), pairs, T.broadcast(T.int16(1), lanes16), dtype=f"int32x{n}")

    return impl


def _impl_exact(n: int, madd_wd: str):
    """Both operands widened to int16 (u8 zero-extended, s8 sign-extended), then vpmaddwd: each int32 lane
    gets A[0] * B[i, 0] + A[1] * B[i, 1], exactly."""
    from tvm.script import tirx as T

    lanes16 = 2 * n

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((2,), "uint8", offset_factor=1), B: T.Buffer((n, 2), "int8", offset_factor=1),
             C: T.Buffer((n,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:n], A[0:2], B[0:n, 0:2])
            T.writes(C[0:n])
            a = T.reinterpret(T.broadcast(T.reinterpret(T.Cast("int16x2", A.vload([0], "uint8x2")), dtype="int32"),
                                          n), dtype=f"int16x{lanes16}")
            b = T.Cast(f"int16x{lanes16}", B.vload([0, 0], dtype=f"int8x{lanes16}"))
            C[T.ramp(T.int32(0), 1, n)] += T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(madd_wd), a, b,
                                                                   dtype=f"int32x{n}")

    return impl


def _impl(key: str):
    if key == "vnni":
        return _impl_vnni()
    if key == "avx512":
        return _impl_maddubs(16, 512, "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512")
    if key == "avx2":
        return _impl_maddubs(8, 256, "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd")
    if key == "avx512-exact":
        return _impl_exact(16, "llvm.x86.avx512.pmaddw.d.512")
    return _impl_exact(8, "llvm.x86.avx2.pmadd.wd")


@cache
def registered(key: str) -> Intrinsic:
    """The intrinsic `key`, registered with TVM (once per process: MetaSchedule's builder workers import
    kiln.compiler.int8 through the schedule rule, so they register it too)."""
    from tvm.s_tir import TensorIntrin

    intrin = get(key)
    try:
        TensorIntrin.get(intrin.tvm_name, allow_missing=False)
    except Exception:
        TensorIntrin.register(intrin.tvm_name, _desc(intrin.n_lanes, intrin.k_lanes), _impl(key))
    return intrin


def register_all() -> None:
    """Every kiln intrinsic registered in this process. Call before opening a tuning database: MetaSchedule
    parses every record's trace when it loads one, and a record of an int8 kernel names its intrinsic, so a
    process that never lowered int8 itself failed to open a database another run had added such records to
    ("TensorIntrin 'kiln_int8_vnni_16x4' is not registered": every later TVM build on that CPU)."""
    from kiln.compiler.tvm_imports import light_stack

    with light_stack():  # their TVMScript parsed without inspect.stack()'s module lookups (~1 s)
        for key in INTRINSICS:
            registered(key)
