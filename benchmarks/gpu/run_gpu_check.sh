#!/usr/bin/env bash
# Run benchmarks/gpu_check.sh on a CUDA machine whose Python has torch but not this project's
# other packages, and only CUDA 13 libraries (as the workplace's lent H100 had, session 3).
#
# Here (with internet), in the repository root, fetch the wheels and build the cuFFT shim once:
#   mkdir -p .whl/shim && for p in astra-toolbox==2.5.0 odl==1.0.0 pydicom==3.0.2 array-api-compat \
#       future nvidia-cuda-runtime-cu12; do python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl $p; done
#   gcc -shared -fPIC -O2 -o .whl/shim/libcufft.so.11 benchmarks/gpu/cufft_shim.c -ldl \
#       -Wl,--version-script=<(echo 'libcufft.so.11 { global: cufft*; local: *; };') -Wl,-soname,libcufft.so.11
# There (.whl travels with the tree): bash benchmarks/gpu/run_gpu_check.sh
# Results: $OUT/gpu_check.tgz plus status.txt and the JSON files in $OUT (default /tmp/gpu_out).
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site
# libastra (PyPI wheel) links CUDA 12's libcufft.so.11; the shim forwards to CUDA 13's libcufft.so.12.
mkdir -p /tmp/shim && cp .whl/shim/libcufft.so.11 /tmp/shim/
cufft=$(find / -xdev -name 'libcufft.so.12*' 2>/dev/null | head -1)
echo "cufft found: ${cufft:-none}"
export LD_LIBRARY_PATH=/tmp/shim:$(dirname "${cufft:-/x/x}"):${LD_LIBRARY_PATH:-}
python3 -c "import astra; print('astra use_cuda', astra.use_cuda())"
rm -rf /tmp/gc && mkdir -p /tmp/gc
OUT=/tmp/gc PYTHON=python3 PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh
rc=$?
find /tmp/gc/gpu_check/demo_out -name '*.png' -delete 2>/dev/null
tar czf "$OUT/gpu_check.tgz" -C /tmp/gc gpu_check
cp /tmp/gc/gpu_check/status.txt /tmp/gc/gpu_check/*.json "$OUT/" 2>/dev/null
exit $rc
