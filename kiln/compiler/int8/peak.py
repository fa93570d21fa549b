"""The int8 peak of a CPU: what an int8 kernel's GOP/s is a share of.

peak GOP/s = cores x base clock (GHz) x int8 ops per cycle per core, where ops per cycle = 2 (TVM counts the
multiply and the add of a multiply-accumulate, as it counts the kernels' flop) x the u8 x s8 multiply-accumulates
one multiply instruction does x how many of them a core issues per cycle. The last factor is the
microarchitecture's, looked up below by the LLVM CPU name TVM's target carries (`mcpu`), per vector width:
  - 512-bit integer multiplies (vpdpbusd, vpmaddubsw, vpmaddwd on zmm) per cycle: two on Xeons with a second
    512-bit unit on port 5, one where a zmm instruction takes the whole 512-bit unit (Rocket Lake's single FMA
    unit; Zen 4 runs it as two 256-bit halves on its two multiply pipes);
  - 256-bit ones (ymm) per cycle: two everywhere listed.
Each intrinsic (kiln.compiler.int8.intrinsics) multiplies MACS_PER_MULTIPLY u8 x s8 pairs per multiply
instruction: vpdpbusd zmm 64; the saturating pair vpmaddubsw + vpmaddwd 64 per two multiplies, so 32 each; the
exact form's vpmaddwd on int16 32 per zmm; half of each on ymm. It is the multiply ports' ceiling: the loads,
broadcasts and (exact forms) widening moves a kernel also issues are not counted.

The clock is the CPU's base clock (kiln.cpu.base_clock); a VM's /proc/cpuinfo `cpu MHz` is the nominal clock
the hypervisor reports, and a core that turbos above it runs faster than this peak allows. A kernel measured
above 100 % is therefore a measurement problem (turbo above the clock used, or a wrong timing or flop count),
flagged as such and never printed as a share.

Sources: the figures checked here are LLVM's scheduling models, run with `llvm-mca-16 -mcpu=NAME` on a block of
independent instructions (the reciprocal throughput each gives is in the row), and the vendors' manuals those
models cite. Where a model disagrees with a measured kernel or the vendor, the row says which it follows and why.
A CPU with no row (or a row without a sourced figure) gets no peak: no share is printed for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln.cpu import cpuinfo_flags

# u8 x s8 multiply-accumulates per multiply instruction, per intrinsic (kiln.compiler.int8.intrinsics)
MACS_PER_MULTIPLY = {"vnni": 64, "avx512": 32, "avx512-exact": 32, "avx2": 16, "avx2-exact": 16}
WIDTH = {"vnni": 512, "avx512": 512, "avx512-exact": 512, "avx2": 256, "avx2-exact": 256}
OPS_PER_MAC = 2  # a multiply and an add, as TVM counts a task's flop

INTEL_MANUAL = "Intel 64 and IA-32 Architectures Optimization Reference Manual"
AMD_ZEN3 = "AMD Software Optimization Guide for AMD Family 19h Processors (Zen 3, pub. 56665)"
AMD_ZEN4 = "AMD Software Optimization Guide for the AMD Family 19h (Zen 4) Microarchitecture (pub. 57647)"


@dataclass(frozen=True)
class Uarch:
    name: str
    zmm_per_cycle: float | None  # 512-bit integer multiplies issued per cycle and core; None: no AVX-512
    ymm_per_cycle: float | None  # 256-bit ones; None: no sourced figure
    vnni: bool  # AVX-512 VNNI (vpdpbusd on zmm)
    source: str  # where the figures come from
    how: str  # how they follow

    def ops_per_cycle(self, intrinsic: str) -> float | None:
        """int8 ops per cycle and core of kiln's `intrinsic` here; None where it cannot run or no figure is
        sourced."""
        if intrinsic not in MACS_PER_MULTIPLY or (intrinsic == "vnni" and not self.vnni):
            return None
        rate = self.zmm_per_cycle if WIDTH[intrinsic] == 512 else self.ymm_per_cycle
        return OPS_PER_MAC * MACS_PER_MULTIPLY[intrinsic] * rate if rate else None


_XEON_2FMA = ("two 512-bit integer multiplies per cycle (port 0, with ports 0+1 fused, and port 5) and two 256-bit "
              "(ports 0 and 1): vnni 2 x 64 u8 MACs x 2 ops = 256, the avx512 forms 2 x 32 x 2 = 128, the avx2 "
              "forms 2 x 16 x 2 = 64. Xeons with one 512-bit FMA unit (some Silver/Bronze parts) issue half the "
              "512-bit rate")
_MCA_05 = "llvm-mca-16 -mcpu={}: vpdpbusd/vpmaddubsw/vpmaddwd zmm and ymm 0.5 cycles each"

UARCHS: dict[str, Uarch] = {u.name: u for u in (
    Uarch("skylake-avx512", 2, 2, False, f"{INTEL_MANUAL} (Skylake Server: the port 5 FMA unit); "
          + _MCA_05.format("skylake-avx512"), _XEON_2FMA + "; no VNNI"),
    Uarch("cascadelake", 2, 2, True, f"{INTEL_MANUAL} (Cascade Lake: Skylake Server's ports, plus VNNI); "
          + _MCA_05.format("cascadelake"), _XEON_2FMA),
    Uarch("icelake-server", 2, 2, True, f"{INTEL_MANUAL} (Ice Lake server: the port 5 FMA unit); "
          + _MCA_05.format("icelake-server"), _XEON_2FMA),
    Uarch("sapphirerapids", 2, 2, True, f"{INTEL_MANUAL} (Golden Cove server: the port 5 FMA unit); "
          + _MCA_05.format("sapphirerapids") + "; kiln's VNNI kernels measured up to 1.29 TOP/s on 2 cores of "
          "such a Xeon at a nominal 2.6 GHz (benchmarks/int8_vs_ort.json), above what one zmm per cycle allows",
          _XEON_2FMA),
    Uarch("emeraldrapids", 2, 2, True, f"{INTEL_MANUAL} (Raptor Cove, Golden Cove's server successor: the port 5 "
          "FMA unit); " + _MCA_05.format("emeraldrapids"), _XEON_2FMA),
    Uarch("rocketlake", 1, 2, True, f"{INTEL_MANUAL} (Ice Lake client / Cypress Cove: one 512-bit FMA unit, "
          "ports 0+1 fused; port 5 has none). LLVM's IceLake model, shared by client and server parts, says 0.5 "
          "cycles (llvm-mca-16 -mcpu=rocketlake): it does not tell the client core apart, so it is not followed",
          "one 512-bit integer multiply per cycle, two 256-bit: vnni 1 x 64 u8 MACs x 2 ops = 128, the avx512 "
          "forms 64, the avx2 forms 2 x 16 x 2 = 64. An Intel VM that reports `rocketlake` while /proc/cpuinfo "
          "lists AMX is a Sapphire Rapids or later Xeon (no Rocket Lake has AMX): see microarchitecture()"),
    Uarch("znver3", None, 2, False, f"{AMD_ZEN3}: vector integer multiplies on FP pipes 0 and 3; LLVM's Znver3 "
          "model (llvm-mca-16 -mcpu=znver3: vpmaddubsw/vpmaddwd ymm 0.5 cycles each)",
          "AVX2 only, no AVX-512, no VNNI: two 256-bit integer multiplies per cycle, the avx2 forms 2 x 16 u8 "
          "MACs x 2 ops = 64"),
    Uarch("znver4", 1, 2, True, f"{AMD_ZEN4}: AVX-512 executed as two 256-bit halves; LLVM's Znver4 model "
          "(X86ScheduleZnver4.td: integer multiplies on FP pipes 0 and 3, a zmm one holding its pipe 2 cycles; "
          "llvm-mca-16 -mcpu=znver4: vpmaddubsw/vpmaddwd zmm 1.0 cycle, ymm 0.5). The same model gives vpdpbusd "
          "4 cycles on FP0/FP1 (2.0 per zmm): kiln's ResNet-50-thin VNNI kernel measured 821 GOP/s on 2 cores at "
          "a nominal 2.6 GHz (benchmarks/int8_vs_ort.json), 2.5x what that allows at that clock and above it at "
          "any Zen 4 clock, so vpdpbusd is taken at the multiply pipes' rate",
          "one 512-bit integer multiply per cycle (two 256-bit halves on the two multiply pipes), two 256-bit: "
          "vnni 1 x 64 u8 MACs x 2 ops = 128, the avx512 forms 1 x 32 x 2 = 64, the avx2 forms 2 x 16 x 2 = 64"),
    Uarch("znver5", None, None, True, "no figure: the sources checked disagree. LLVM's Znver5 model "
          "(X86ScheduleZnver5.td) puts integer multiplies on three FP pipes with a zmm one holding its pipe 2 "
          "cycles, and vpdpbusd on two pipes for 4 cycles each, while AMD describes Zen 5 as executing 512-bit "
          "operations at full width; neither is checked against a measured kernel here",
          "no peak until a sourced figure is added"),
)}


def microarchitecture(mcpu: str, flags: set[str] | None = None) -> tuple[str, str | None]:
    """The table's row for the LLVM CPU name `mcpu` on a CPU with /proc/cpuinfo `flags` (read here when None),
    and why it differs from `mcpu` (None when it does not): LLVM answers `rocketlake` on the Intel VMs whose
    model is hidden, though /proc/cpuinfo lists AMX, which only Sapphire Rapids and later Xeons have."""
    flags = cpuinfo_flags() if flags is None else flags
    if mcpu == "rocketlake" and "amx_int8" in flags:
        return "sapphirerapids", ("LLVM reports `rocketlake`, but /proc/cpuinfo lists amx_int8, which no Rocket "
                                  "Lake has: taken as a Sapphire Rapids (or later) Xeon")
    return mcpu, None


@dataclass(frozen=True)
class Peak:
    gops: float | None  # None: no sourced figure for this CPU and intrinsic
    mcpu: str  # the LLVM CPU name the target carried
    uarch: str  # the table's row used
    ops_per_cycle: float | None
    cores: int
    ghz: float | None
    clock: str  # where the clock was read, and what it is
    note: str  # how the figure follows, or why there is none

    def describe(self) -> str:
        if self.gops is None:
            return f"no int8 peak for `{self.mcpu}`: {self.note}"
        return (f"peak {self.gops:g} GOP/s = {self.cores} cores x {self.ghz:g} GHz ({self.clock}) x "
                f"{self.ops_per_cycle:g} int8 ops per cycle ({self.uarch}: {self.note})")


def peak(intrinsic: str, mcpu: str, cores: int, ghz: float | None, clock: str = "",
         flags: set[str] | None = None) -> Peak:
    """The int8 peak of `cores` cores of LLVM CPU `mcpu` at `ghz` running kiln's `intrinsic`."""
    uarch, why = microarchitecture(mcpu, flags)
    row = UARCHS.get(uarch)
    if row is None:
        return Peak(None, mcpu, uarch, None, cores, ghz, clock, f"no row for LLVM CPU `{uarch}` in "
                    "kiln.compiler.int8.peak.UARCHS")
    ops = row.ops_per_cycle(intrinsic)
    note = "; ".join(x for x in (why, row.how) if x)
    if ops is None:  # cannot run it, or no sourced figure: the row's source says which
        return Peak(None, mcpu, uarch, None, cores, ghz, clock, f"{intrinsic} on {uarch}: {note} ({row.source})")
    if not ghz:
        return Peak(None, mcpu, uarch, ops, cores, ghz, clock, "the clock is unknown")
    return Peak(round(cores * ghz * ops, 1), mcpu, uarch, ops, cores, ghz, clock, note)


def share(gops: float | None, peak_gops: float | None) -> float | None:
    """A kernel's GOP/s over the peak; None where either is unknown. Above 1.0 is not a share: see flag()."""
    return gops / peak_gops if gops and peak_gops else None


def flag(fraction: float | None) -> str:
    """A share as printed: a percentage up to 100 %; above, a measurement problem (never a share)."""
    if fraction is None:
        return "-"
    if fraction > 1.0:  # a clock above the base clock the peak assumes, or a wrong timing or flop count
        return f"above peak ({fraction:.2f}x): measurement problem"
    return f"{fraction:.0%}"
