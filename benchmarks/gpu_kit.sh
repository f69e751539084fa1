#!/usr/bin/env bash
# Prepare, on a machine with PyPI, what benchmarks/gpu_check.sh needs on a GPU machine that
# has no internet: wheels of the Python packages such an image usually lacks, and pycuda's
# sdist (pycuda publishes no Linux wheels; it is built there, against that CUDA).
#
#   benchmarks/gpu_kit.sh [KIT_DIR] [PYTHON_VERSION]     (defaults: .gpu-kit, 3.12)
#
# Then, on the GPU machine, from the repository root with KIT_DIR copied along:
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu-kit/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
#   GPU_KIT=.gpu-kit bash benchmarks/gpu_check.sh
#
# gpu_check.sh builds pycuda from the kit's sdist into /tmp/site (no build isolation: it
# uses the machine's setuptools and numpy). The list below is what edgemed's runtime and
# the gpu/kernels tests import beyond numpy, OpenCV, onnx, onnxruntime and pytest, which
# a CUDA image with PyTorch has; edgemed itself runs from the checkout (PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT="${1:-.gpu-kit}"
PY="${2:-3.12}"
mkdir -p "$KIT"

# edgemed's runtime: pydicom, nibabel (+ importlib-resources on old Pythons, not here).
# pycuda's runtime: pytools (+ siphash24, typing-extensions), platformdirs, mako (+ markupsafe).
WHEELS=(pydicom nibabel pytools siphash24 typing-extensions platformdirs mako markupsafe)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$KIT" "${WHEELS[@]}"
python3 -m pip download -q --no-deps --no-binary pycuda -d "$KIT" pycuda

# A kit inside the checkout must not be committed (it is carried to the GPU machine).
if [[ -d .git && "$KIT" != /* ]]; then
    grep -qxF "/${KIT#./}/" .git/info/exclude 2>/dev/null || echo "/${KIT#./}/" >> .git/info/exclude
fi
du -sh "$KIT"
ls "$KIT"
