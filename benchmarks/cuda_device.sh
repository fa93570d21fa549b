#!/usr/bin/env bash
# The CUDA benchmark on a lent GPU machine that has Python 3.12, numpy, onnx and onnxruntime but no TVM:
#   benchmarks/cuda_device.sh pack        # here: .gpu/ = TVM, tvm-ffi, pydantic(-settings) for cp312 (~62 MiB;
#                                         # the compiler as one xz stream with the x86 filter: 5 minutes)
#   benchmarks/cuda_device.sh run [cuda]  # there, carrying .gpu: unpack, make the example models, run
#                                         # compile_vs_ort.py --target cuda; RESULTS.md etc. to $OUT
# run's knobs: MODELS="encoder resnet18", BUDGETS="encoder=0,256 resnet18=0,256" (trials; 0 = DLight's
# defaults), TUNE_MINUTES=2 (each search's wall-clock cap), BENCH_TIMEOUT=400 (seconds for the whole benchmark).
# The host has scipy but no xgboost, and the carry has no room for it: kiln tunes with MetaSchedule's random
# cost model there and says so. psutil and cloudpickle, which MetaSchedule's search needs, are carried.
# .gpu/ is build output: add `/.gpu/` to .git/info/exclude. The carry limit is 64 MiB, so the TVM package goes
# without its cutlass headers, web/, C++ sources, tflite and torch frontends; tvm-ffi without its sources (its
# libtvm_ffi_testing.so is needed). The tracked tree travels too: keep .gpu/ under ~62 MiB.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
pack)
  set -e
  site=.venv/lib/python3.11/site-packages; tmp=$(mktemp -d); mkdir -p .gpu "$tmp/whl" "$tmp/site"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp/whl" \
    "apache-tvm-ffi==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("apache-tvm-ffi"))')" \
    "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
    "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
    "pydantic-settings==$(.venv/bin/python -c 'from importlib.metadata import version; print(version("pydantic-settings"))')" \
    "psutil==$(.venv/bin/python -c 'import psutil; print(psutil.__version__)')" \
    "cloudpickle==$(.venv/bin/python -c 'import cloudpickle; print(cloudpickle.__version__)')" \
    python-dotenv annotated-types typing-inspection
  for w in "$tmp"/whl/*.whl; do unzip -q -o "$w" -d "$tmp/site"; done
  rm -rf "$tmp"/site/tvm_ffi/{3rdparty,include,src,cython}
  tar -cJf .gpu/site.tar.xz -C "$tmp/site" .
  (cd "$site" && tar --exclude=tvm/lib/libtvm_compiler.so --exclude=__pycache__ --exclude=tvm/3rdparty \
    --exclude=tvm/web --exclude=tvm/src --exclude=tvm/relax/frontend/tflite --exclude=tvm/relax/frontend/torch \
    --exclude=RECORD -cJf "$OLDPWD/.gpu/tvm-rest.tar.xz" tvm apache_tvm-*.dist-info)
  xz -T1 --x86 --lzma2=preset=9e,dict=256MiB -c "$site/tvm/lib/libtvm_compiler.so" > .gpu/libtvm_compiler.so.xz
  rm -rf "$tmp"; du -cb .gpu/* | tail -1 ;;
run)
  TARGET=${2:-cuda}; PY=${PY:-python3}; SITE=${SITE:-/tmp/site}; OUT=${OUT:-/tmp/out}
  mkdir -p "$SITE" "$OUT"; t0=$(date +%s)
  tar -xJf .gpu/site.tar.xz -C "$SITE" && tar -xJf .gpu/tvm-rest.tar.xz -C "$SITE" || exit 3
  [ -f "$SITE/tvm/lib/libtvm_compiler.so" ] || xz -T0 -dc .gpu/libtvm_compiler.so.xz > "$SITE/tvm/lib/libtvm_compiler.so" || exit 3
  export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  $PY -c "import tvm, onnxruntime; print('tvm', tvm.__version__, 'ort', onnxruntime.__version__, 'cuda', tvm.cuda().exist)" || exit 4
  $PY -c "import importlib.util as u; print({m: bool(u.find_spec(m)) for m in ('psutil', 'cloudpickle', 'xgboost', 'scipy')})"
  command -v nvcc || echo "no nvcc on PATH"
  for s in examples/digits/train.py examples/resnet18/make_model.py examples/encoder/make_model.py; do $PY $s >/dev/null || exit 5; done
  models=${MODELS:-digits encoder resnet18}
  timeout "${BENCH_TIMEOUT:-400}" $PY benchmarks/compile_vs_ort.py --target "$TARGET" --models $models \
    --budgets ${BUDGETS:-digits=0 resnet18=0 encoder=0} ${TUNE_MINUTES:+--tune-minutes $TUNE_MINUTES} 2>&1 \
    | tee "$OUT/bench.log"
  rc=${PIPESTATUS[0]}
  cp benchmarks/RESULTS.md benchmarks/results-*.json "$OUT/" 2>/dev/null
  for f in benchmarks/work/*-"$TARGET"/db-*/tune.log; do
    [ -f "$f" ] && tail -c 20000 "$f" > "$OUT/tune-$(basename "$(dirname "$(dirname "$f")")")-$(basename "$(dirname "$f")").log"
  done
  tar -czf "$OUT/ms-logs.tar.gz" benchmarks/work/*-"$TARGET"/db-*/logs 2>/dev/null  # MetaSchedule's per-task logs
  echo "exit $rc after $(( $(date +%s) - t0 )) s"; exit "$rc" ;;
*) echo "usage: $0 pack | run [cuda|llvm]" >&2; exit 2 ;;
esac
