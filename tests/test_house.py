"""The house rules a reader relies on, checked where the code is: one place reads the environment, the web
process stays light, and the layout's import contracts hold (import-linter, as `make lint` runs it; CI runs only
`make ruff` before the suite, so the contracts are checked here, once)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READS_ENV = re.compile(r"os\.environ\.get|os\.getenv|in os\.environ|os\.environ\[[^\]]+\](?!\s*=[^=])|"
                       r"dict\(os\.environ\)|\*\*os\.environ")


def test_only_config_reads_the_environment():
    """kiln.config's Settings is the one reader (child processes get kiln.config.environment()); setting a
    variable for a library that reads it (TVM_NUM_THREADS) is a write, not a read."""
    readers = sorted(str(p.relative_to(ROOT)) for folder in ("kiln", "web", "flows", "tasks")
                     for p in (ROOT / folder).rglob("*.py") if READS_ENV.search(p.read_text()))
    assert readers == ["kiln/config.py"], readers


def test_the_web_app_imports_no_onnx_onnxruntime_or_tvm():
    code = ("import sys, web.app; heavy = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'onnx', 'onnxruntime', 'tvm'}); print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_contracts_hold():
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "0 broken" in proc.stdout, proc.stdout[-3000:]
