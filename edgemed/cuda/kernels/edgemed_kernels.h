// Shared by preprocess.cu and postprocess.cu: parameter layouts and float helpers.
//
// The structs are filled on the host by edgemed/cuda/packing.py through NumPy structured
// dtypes with the same field order and sizes; the static_asserts pin the sizes so a
// change on one side without the other fails to compile rather than reading garbage.
//
// Every float32 operation whose rounding the CPU reference (edgemed.preprocess.cpu,
// NumPy/OpenCV) fixes goes through em_add/em_sub/em_mul/em_div, and every float64 one
// through em_dadd/em_dsub/em_dmul: under nvcc they are the round-to-nearest intrinsics,
// which nvcc never contracts into a fused multiply-add (a plain a*b+c may become an FMA
// and round once instead of twice). Host builds use -ffp-contract=off, and nvcc gets
// -fmad=false (edgemed.cuda.build.NVCC_OPTIONS), for the same reason: both compilers then
// round what the host tests check the way the GPU rounds it.
//
// No float64 division or square root runs per pixel (sm_87 runs FP64 at 1/64 of FP32):
// the bilinear taps are computed once per row and column on the host
// (edgemed.cuda.packing.bilinear_taps) and the z-score offset and scale once per slice
// and channel (em_zstats pass 2).
#pragma once

#include "host_shim.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#include <stdint.h>
#else
#include <cmath>
#include <cstdint>
#include <cstring>
#endif
#include <math.h>

#define EM_MAX_CHANNELS 16

// ---- parameter blocks (mirrored in edgemed/cuda/packing.py) ---------------------------

enum { EM_SCALE_NONE = 0, EM_SCALE_UNIT = 1, EM_SCALE_ZSCORE = 2 };
enum { EM_ACT_NONE = 0, EM_ACT_SOFTMAX = 1, EM_ACT_SIGMOID = 2 };
enum { EM_DECIDE_ARGMAX = 0, EM_DECIDE_THRESHOLD = 1 };

// One per launch: the model input geometry and the per-channel intensity steps.
struct EmPreSpec {
    int32_t height;      // H of the model input
    int32_t width;       // W
    int32_t channels;    // intensity channels C (<= EM_MAX_CHANNELS)
    int32_t scale;       // EM_SCALE_*
    int32_t out_half;    // 1: write float16 (bits), 0: float32
    int32_t reserved0[3];
    float pad_value;     // letterbox padding, in output units
    float reserved1[3];
    int32_t has_range[EM_MAX_CHANNELS];  // 0: no clip for this channel
    float lo[EM_MAX_CHANNELS];           // float32(low)
    float hi[EM_MAX_CHANNELS];           // float32(high)
    float inv[EM_MAX_CHANNELS];          // float32(1 / (high - low)), unit scale
};
static_assert(sizeof(EmPreSpec) == 304, "EmPreSpec layout changed: update cuda/packing.py");

// One per slice of the batch (blockIdx.z).
struct EmPreSlice {
    int64_t src_offset;  // first raw pixel of this slice, in elements from the base pointer
    int32_t src_h, src_w;
    int32_t top, left, box_h, box_w;  // placement box inside H x W
    float slope, intercept;           // physical = raw * slope + intercept (float32)
    int32_t tap_x;                    // first of box_w column taps (EmTap) of this slice
    int32_t tap_y;                    // first of box_h row taps
};
static_assert(sizeof(EmPreSlice) == 48, "EmPreSlice layout changed: update cuda/packing.py");

struct EmPostSpec {
    int32_t channels;    // classes C of the model output
    int32_t height;      // H
    int32_t width;       // W
    int32_t activation;  // EM_ACT_*
    int32_t decision;    // EM_DECIDE_*
    int32_t reserved0[3];
    float threshold;     // float32(threshold), EM_DECIDE_THRESHOLD
    float reserved1[3];
};
static_assert(sizeof(EmPostSpec) == 48, "EmPostSpec layout changed: update cuda/packing.py");

struct EmPostSlice {
    int64_t out_offset;  // first mask byte of this slice
    int32_t src_h, src_w;             // mask size (the source slice)
    int32_t top, left, box_h, box_w;  // placement box inside H x W
    int32_t tap_x;                    // first of src_w column taps (EmTap) of this slice
    int32_t tap_y;                    // first of src_h row taps
};
static_assert(sizeof(EmPostSlice) == 40, "EmPostSlice layout changed: update cuda/packing.py");

// One bilinear tap of a destination row or column: source pixels i0 and i1 (clamped) and
// the weight a of i1, as OpenCV INTER_LINEAR computes them (edgemed.cuda.packing).
struct EmTap {
    int32_t i0, i1;
    float a;
    int32_t reserved;
};
static_assert(sizeof(EmTap) == 16, "EmTap layout changed: update cuda/packing.py");

// ---- float32 arithmetic with one rounding per operation --------------------------------

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float em_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ float em_sub(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ float em_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ float em_div(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double em_dadd(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ double em_dsub(double a, double b) { return __dsub_rn(a, b); }
__device__ __forceinline__ double em_dmul(double a, double b) { return __dmul_rn(a, b); }
#else
__device__ __forceinline__ float em_add(float a, float b) { return a + b; }
__device__ __forceinline__ float em_sub(float a, float b) { return a - b; }
__device__ __forceinline__ float em_mul(float a, float b) { return a * b; }
__device__ __forceinline__ float em_div(float a, float b) { return a / b; }
__device__ __forceinline__ double em_dadd(double a, double b) { return a + b; }
__device__ __forceinline__ double em_dsub(double a, double b) { return a - b; }
__device__ __forceinline__ double em_dmul(double a, double b) { return a * b; }
#endif

// ---- float16 <-> float32, round to nearest even (as NumPy's astype) --------------------

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ uint16_t em_f2h(float f) {
    return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float em_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
#else
__device__ __forceinline__ uint16_t em_f2h(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)  // inf, or NaN (kept quiet)
        return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x0200u : 0u));
    if (ax >= 0x477ff000u)  // >= 65520 rounds past the largest half (65504)
        return static_cast<uint16_t>(sign | 0x7c00u);
    if (ax >= 0x38800000u) {  // a normal half: round the 13 dropped bits to even
        ax += 0x0fffu + ((ax >> 13) & 1u);
        return static_cast<uint16_t>(sign | ((ax - 0x38000000u) >> 13));
    }
    // Subnormal half (or zero): units of 2**-24. The scaling is exact (power of two) and
    // nearbyintf rounds to even in the default rounding mode; 1024 encodes 2**-14 right.
    float af;
    std::memcpy(&af, &ax, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(nearbyintf(af * 16777216.0f)));
}

__device__ __forceinline__ float em_h2f(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t e = (h >> 10) & 0x1fu;
    const uint32_t m = h & 0x3ffu;
    uint32_t bits;
    if (e == 0) {
        const float f = ldexpf(static_cast<float>(m), -24);
        return sign ? -f : f;
    }
    bits = (e == 31) ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e + 112u) << 23) | (m << 13));
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
#endif

// ---- bilinear interpolation, OpenCV INTER_LINEAR --------------------------------------

// (1 - a) * p0 + a * p1 with float32 weights, each operation rounded once (OpenCV's
// horizontal pass, and its vertical pass on the two row results).
__device__ __forceinline__ float em_lerp(float p0, float p1, float a) {
    return em_add(em_mul(p0, em_sub(1.0f, a)), em_mul(p1, a));
}
