"""The int8 peak is looked up per microarchitecture (kiln.compiler.int8.peak), not per instruction set: the same
intrinsic has a different ceiling on a two-port Xeon, a one-port client core and Zen 4's halves, a CPU with no
sourced figure gets no peak, and a kernel above the peak is flagged as a measurement problem, never a share.

The figures asserted are the table's rows worked out by hand from their stated derivation (2 ops x u8 MACs per
multiply instruction x multiplies per cycle), so a row changed without its derivation fails here."""

from __future__ import annotations

import pytest

from kiln.compiler.int8.intrinsics import INTRINSICS, get
from kiln.compiler.int8.peak import MACS_PER_MULTIPLY, UARCHS, flag, microarchitecture, peak, share


@pytest.mark.parametrize(("mcpu", "intrinsic", "ops"), [
    ("cascadelake", "vnni", 2 * 64 * 2),  # two zmm vpdpbusd per cycle (ports 0 and 5)
    ("sapphirerapids", "vnni", 2 * 64 * 2),
    ("icelake-server", "avx512-exact", 2 * 32 * 2),
    ("skylake-avx512", "avx512", 2 * 32 * 2),  # vpmaddubsw + vpmaddwd: 64 MACs per two multiplies
    ("rocketlake", "vnni", 2 * 64 * 1),  # the client core's single 512-bit unit
    ("znver4", "vnni", 2 * 64 * 1),  # 512-bit as two 256-bit halves on two multiply pipes
    ("znver4", "avx512", 2 * 32 * 1),
    ("znver4", "avx2", 2 * 16 * 2),  # ymm: two per cycle
    ("znver3", "avx2-exact", 2 * 16 * 2),
])
def test_the_table_gives_each_microarchitecture_its_own_ops_per_cycle(mcpu, intrinsic, ops):
    p = peak(intrinsic, mcpu, cores=2, ghz=2.5, flags=set())
    assert p.ops_per_cycle == ops
    assert p.gops == pytest.approx(2 * 2.5 * ops)
    assert p.uarch == mcpu
    assert get(intrinsic).peak_gops(2, 2.5, mcpu) == p.gops  # what the manifest records


def test_no_figure_where_the_cpu_cannot_run_it_or_none_is_sourced():
    assert peak("vnni", "znver3", 2, 2.5, flags=set()).gops is None  # Zen 3 has no AVX-512 VNNI
    assert peak("avx512", "znver3", 2, 2.5, flags=set()).gops is None
    assert peak("vnni", "skylake-avx512", 2, 2.5, flags=set()).gops is None  # no VNNI before Cascade Lake
    unsourced = peak("vnni", "znver5", 2, 2.5, flags=set())
    assert unsourced.gops is None and "disagree" in unsourced.note
    unknown = peak("vnni", "some-future-core", 2, 2.5, flags=set())
    assert unknown.gops is None and "no row" in unknown.describe()
    assert peak("vnni", "cascadelake", 2, None, flags=set()).gops is None  # no clock, no peak


def test_every_row_names_its_source_and_derivation():
    for row in UARCHS.values():
        assert row.source and row.how, row.name
    assert set(MACS_PER_MULTIPLY) == set(INTRINSICS)  # every intrinsic has its MACs per multiply


def test_a_vm_reporting_rocketlake_with_amx_is_a_sapphire_rapids():
    """LLVM answers `rocketlake` on the Intel VMs; AMX in /proc/cpuinfo rules a Rocket Lake out (one 512-bit
    unit): that peak would be half and the kernels measured there would all read near 200 %."""
    assert microarchitecture("rocketlake", {"avx512_vnni"}) == ("rocketlake", None)
    uarch, why = microarchitecture("rocketlake", {"avx512_vnni", "amx_int8"})
    assert uarch == "sapphirerapids" and "amx_int8" in why
    assert peak("vnni", "rocketlake", 2, 2.6, flags={"amx_int8"}).gops == pytest.approx(2 * 2.6 * 256, abs=0.1)
    assert peak("vnni", "rocketlake", 2, 2.6, flags=set()).gops == pytest.approx(2 * 2.6 * 128, abs=0.1)


def test_above_the_peak_is_flagged_not_printed_as_a_share():
    # the MiniLM kernel of benchmarks/int8_vs_ort.json: 1458.6 GOP/s against 2 cores x 2.6 GHz x 256
    fraction = share(1458.6, peak("vnni", "sapphirerapids", 2, 2.6, flags=set()).gops)
    assert fraction == pytest.approx(1.096, abs=1e-3)
    text = flag(fraction)
    assert "measurement problem" in text and "%" not in text
    assert flag(share(665.6, 1331.2)) == "50%"
    assert flag(share(1331.2, 1331.2)) == "100%"  # at the peak is still a share
    assert flag(share(None, 1331.2)) == flag(share(500.0, None)) == "-"
