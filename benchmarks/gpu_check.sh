#!/usr/bin/env bash
# GPU check for the CUDA kernels: run on a machine with an NVIDIA GPU (no internet needed
# when pycuda is already importable, a local sdist is given, or GPU_KIT names a kit made
# by benchmarks/gpu_kit.sh, whose header shows the whole offline recipe).
#
#   benchmarks/gpu_check.sh [path/to/pycuda-<version>.tar.gz]
#
# 1. pycuda: used as installed; else built from the given sdist or the one in $GPU_KIT
#    (with a kit, into $PYCUDA_TARGET, default /tmp/site, put on PYTHONPATH), else from
#    PyPI's sdist (pip install --no-binary pycuda pycuda; needs nvcc and the CUDA headers).
# 2. pytest -m "gpu or kernels" over the GPU-facing tests: the GPU launchers against the
#    CPU reference (tests/cuda), the TensorRT builder/backend (tests/engine), the pipeline
#    with CUDA preprocessing (tests/test_pipeline_gpu.py) and the host-build/nvcc kernel
#    tests (tests/kernels, whose test_volume_kernels.py also runs the 3D kernels on the GPU
#    against the CPU sliding window, resampling and decision). Among them
#    (tests/engine/test_engine_hybrid.py) the whole pipeline with the REAL pycuda, the
#    real kernels on the GPU, real CUDA graphs (cuda-bindings, installed first if
#    missing) and the STAND-IN tensorrt (its engine copies its input out of real device
#    memory, runs the network in ONNX Runtime and copies the output back), so everything
#    but TensorRT itself runs for real: masks against ONNX Runtime, and 20 reloads must
#    not lose GPU memory. Needs no TensorRT.
# 3. benchmarks/kernel_bench.py: kernel timings (CUDA events) next to the CPU reference,
#    then the 3D path (blend + decision per volume, input resampling) against the CPU path.
# 4. with tensorrt: `edgemed build` of the demo bundle's three precisions, then
#    `edgemed bench` on TensorRT and on ONNX Runtime (outputs under $BENCH_OUT, default
#    gpu-bench/).
#
# PYTHON selects the interpreter (default: python3). Exit status: pytest's, else the bench's.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
SDIST="${1:-}"
if [[ -z "$SDIST" && -n "${GPU_KIT:-}" ]]; then
    SDIST="$(ls "$GPU_KIT"/pycuda-*.tar.gz | head -n 1)"
fi
[[ -z "$SDIST" ]] || SDIST="$(realpath "$SDIST")"  # given from the caller's folder
cd "$(dirname "$0")/.."

echo "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
else
    echo "nvidia-smi not found: the gpu tests will skip if no GPU is usable"
fi
command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -n 1 || echo "nvcc not on PATH"

echo "== pycuda"
if ! "$PYTHON" -c "import pycuda.driver" >/dev/null 2>&1; then
    if [[ -z "${CUDA_ROOT:-}" ]] && command -v nvcc >/dev/null 2>&1; then
        # pycuda's setup finds the toolkit through CUDA_ROOT (headers, libcuda stub).
        export CUDA_ROOT="$(dirname "$(dirname "$(command -v nvcc)")")"
    fi
    if [[ -n "$SDIST" ]]; then
        target=()  # with a kit: beside its wheels, in a folder put on PYTHONPATH
        if [[ -n "${GPU_KIT:-}${PYCUDA_TARGET:-}" ]]; then
            target=(--target "${PYCUDA_TARGET:-/tmp/site}")
            export PYTHONPATH="${PYCUDA_TARGET:-/tmp/site}${PYTHONPATH:+:$PYTHONPATH}"
        fi
        echo "building pycuda from $SDIST ${target[*]}"
        # Offline, build isolation cannot fetch setuptools/numpy: use the installed ones;
        # its dependencies come from the kit's wheels (or are there already).
        "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation \
            "${target[@]}" "$SDIST"
    else
        echo "building pycuda from its sdist (pip install --no-binary pycuda pycuda)"
        "$PYTHON" -m pip install --no-binary pycuda pycuda
    fi
fi
"$PYTHON" -c "import pycuda; print('pycuda', pycuda.VERSION_TEXT)"

echo "== cuda-bindings (CUDA graphs)"
"$PYTHON" -c "import cuda.bindings.driver" >/dev/null 2>&1 \
    || "$PYTHON" -m pip install -q "cuda-bindings>=12.6,<13" || true

echo "== tests: pytest -m 'gpu or kernels'"
status=0
"$PYTHON" -m pytest -q -rs -m "gpu or kernels" tests/cuda tests/engine tests/kernels \
    tests/test_pipeline_gpu.py || status=$?

echo "== kernel benchmark"
"$PYTHON" benchmarks/kernel_bench.py || { [[ $status -ne 0 ]] || status=$?; }

echo "== TensorRT: build every precision of the demo bundle, then edgemed bench"
if "$PYTHON" -c "import tensorrt" >/dev/null 2>&1; then
    work="$(mktemp -d)"
    "$PYTHON" -c "import edgemed, shutil, sys; shutil.copytree(edgemed.demo_bundle(), sys.argv[1])" \
        "$work/demo"
    for p in fp32 fp16 int8; do
        "$PYTHON" -m edgemed.cli build "$work/demo" --precision "$p" || { [[ $status -ne 0 ]] || status=$?; }
    done
    # TensorRT and ONNX Runtime side by side (separate runs: bench takes one backend).
    "$PYTHON" -m edgemed.cli bench "$work/demo" --backend tensorrt --batch 1 8 \
        --out "${BENCH_OUT:-gpu-bench}/tensorrt" --quiet || { [[ $status -ne 0 ]] || status=$?; }
    "$PYTHON" -m edgemed.cli bench "$work/demo" --backend tensorrt --batch 1 --cuda-graphs \
        --out "${BENCH_OUT:-gpu-bench}/tensorrt-graphs" --quiet || { [[ $status -ne 0 ]] || status=$?; }
    "$PYTHON" -m edgemed.cli bench "$work/demo" --backend onnxruntime --batch 1 8 \
        --out "${BENCH_OUT:-gpu-bench}/onnxruntime" --quiet || { [[ $status -ne 0 ]] || status=$?; }
else
    echo "tensorrt is not importable here: TensorRT precisions not measured"
fi
exit "$status"
