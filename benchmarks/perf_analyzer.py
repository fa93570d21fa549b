"""NVIDIA's perf_analyzer on this Debian 12 host, fetched into benchmarks/work/perf_analyzer/.

The `perf-analyzer` 2.60 wheel holds a binary built for glibc >= 2.38 (Debian 12 has 2.36, and pip resolves the
name to a 0.1.0 placeholder here). So: the manylinux_2_38 wheel is downloaded as a file, Debian 13's libc6,
libstdc++6, libgcc-s1, libssl3t64 and zlib1g are downloaded with apt (a private source list and state, nothing
installed on the system) and unpacked next to it, and the binary is started through that glibc's loader.

    python benchmarks/perf_analyzer.py -- -m digits -u 127.0.0.1:8001 -i grpc --concurrency-range 1:4
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "benchmarks" / "work" / "perf_analyzer"
WHEEL = "perf-analyzer==2.60.0"
DEBS = ("libc6", "libstdc++6", "libgcc-s1", "libssl3t64", "zlib1g")
TRIXIE = """Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _apt(*args: str, cwd: Path | None = None) -> None:
    opts = [f"-o=Dir::Etc::SourceList={HOME / 'none.list'}", f"-o=Dir::Etc::SourceParts={HOME / 'sources'}",
            f"-o=Dir::State::Lists={HOME / 'apt' / 'lists'}", f"-o=Dir::Cache={HOME / 'apt' / 'cache'}"]
    subprocess.run(["apt-get", "-q", *opts, *args], check=True, cwd=cwd, stdout=subprocess.DEVNULL)


def install() -> list[str]:
    """The command prefix that runs perf_analyzer (downloading it the first time)."""
    binary = HOME / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"
    libs = HOME / "root" / "usr" / "lib" / "x86_64-linux-gnu"
    if not (binary.is_file() and (libs / "ld-linux-x86-64.so.2").is_file()):
        shutil.rmtree(HOME, ignore_errors=True)
        for sub in ("sources", "apt/lists/partial", "apt/cache/archives/partial", "debs", "root"):
            (HOME / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux_2_38_x86_64", "--python-version", "3.11", WHEEL, "-d",
                        str(HOME)], check=True)
        with zipfile.ZipFile(next(HOME.glob("perf_analyzer-*.whl"))) as whl:
            whl.extractall(HOME / "wheel")
        binary.chmod(0o755)
        (HOME / "sources" / "trixie.sources").write_text(TRIXIE)
        _apt("update")
        _apt("download", *DEBS, cwd=HOME / "debs")
        for deb in sorted((HOME / "debs").glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(HOME / "root")], check=True)
    return [str(libs / "ld-linux-x86-64.so.2"), "--library-path", str(libs), str(binary)]


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(subprocess.run([*install(), *(args[1:] if args[:1] == ["--"] else args)]).returncode)
