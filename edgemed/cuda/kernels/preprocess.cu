// Fused preprocessing: raw stored pixels -> model input (NCHW, float32 or float16).
//
// One launch handles a whole batch: grid (ceil(W/bx), ceil(H/by), N), blockIdx.z is the
// slice, one thread per model-input pixel (x, y) computing every channel there. Per
// slice (EmPreSlice): where its raw pixels start, its size, its placement box, its
// rescale slope/intercept and where its bilinear taps are (EmTap, one per column and
// row of the box, from edgemed.cuda.packing.bilinear_taps). Per launch (EmPreSpec): the
// model geometry, the per-channel window/clip range and the scale mode.
//
// Arithmetic, matching edgemed.preprocess.cpu step by step (its docstring is the spec):
//   physical  s = raw * slope + intercept                  (float32, two roundings)
//   window    v = min(max(s, lo), hi)                       (per channel, NaN kept)
//   scale     unit:   v = (v - lo) * inv
//             zscore: v = (v - float32(mean)) * float32(1 / max(std, 1e-6)), mean and
//                     population std of the windowed source slice in float64, from
//                     em_zstats (passes 0 and 1: sum, then sum of squared deviations;
//                     pass 2: the float32 offset and scale per slice and channel)
//   resize    bilinear, OpenCV INTER_LINEAR half-pixel rule (the host's taps), the steps
//             above applied to each of the four source taps BEFORE interpolating, as the
//             CPU reference windows the whole source slice and then resizes it
//   place     stretch: the box is H x W; letterbox: outside the box is pad_value
//   store     float32, or float16 rounded to nearest even from the same float32 value
//
// Needs sm_60 or newer (float64 atomicAdd in em_zstats); built and tested for sm_87/sm_90.
//
// Raw pixel types: int16, uint16, uint8, float32 (one entry point per type and output
// dtype). Grayscale only: RGB/luma and the Sobel edge channel stay on the CPU path.
#include "edgemed_kernels.h"

template <typename T>
__device__ __forceinline__ float em_physical(const T* p, int64_t i, float slope,
                                             float intercept) {
    // int16/uint16/uint8 convert to float32 exactly; then two float32 roundings, as
    // NumPy's raw.astype(float32) * float32(slope) + float32(intercept).
    return em_add(em_mul(static_cast<float>(p[i]), slope), intercept);
}

// Window (clip) of channel c; comparisons, not fminf/fmaxf, so a NaN stays NaN (np.clip).
__device__ __forceinline__ float em_window(float v, const EmPreSpec* spec, int c) {
    if (spec->has_range[c]) {
        const float lo = spec->lo[c];
        const float hi = spec->hi[c];
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
    }
    return v;
}

// ---- zscore statistics ---------------------------------------------------------------
//
// stats[(n * C + c) * 2 + 0] = sum of windowed values of slice n, channel c (pass 0);
// stats[(n * C + c) * 2 + 1] = sum of squared deviations from sum / count (pass 1).
// The buffer is zeroed by the launcher before pass 0. Grid (gx, 1, N), any gx: each
// thread accumulates a grid-stride share in float64 and adds it atomically (no shared
// memory, so the host shim runs the same body). The float64 sums are exact enough that
// their order (atomics are unordered) moves the float32 mean/scale by at most one ulp.
// Pass 2 (grid (1, 1, N), one thread) turns them into what the main kernel applies:
// scale[(n * C + c) * 2 + 0] = float32(mean), [... + 1] = float32(1 / max(std, 1e-6)),
// so the float64 division and square root run once per slice and channel, not per pixel.
template <typename T>
__device__ void em_zstats_body(const T* src, const EmPreSlice* slices, const EmPreSpec* spec,
                               double* stats, float* scale, int pass) {
    const int n = static_cast<int>(blockIdx.z);
    const EmPreSlice s = slices[n];
    const T* p = src + s.src_offset;
    const int64_t count = static_cast<int64_t>(s.src_h) * s.src_w;
    const int C = spec->channels;
    if (pass == 2) {
        if (blockIdx.x != 0 || threadIdx.x != 0) return;
        for (int c = 0; c < C; ++c) {
            const int64_t k = (static_cast<int64_t>(n) * C + c) * 2;
            const double sd = sqrt(stats[k + 1] / static_cast<double>(count));
            scale[k] = static_cast<float>(stats[k] / static_cast<double>(count));
            scale[k + 1] = static_cast<float>(1.0 / (sd > 1e-6 ? sd : 1e-6));
        }
        return;
    }
    const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int c = 0; c < C; ++c) {
        double* slot = stats + (static_cast<int64_t>(n) * C + c) * 2;
        const double mean = pass ? slot[0] / static_cast<double>(count) : 0.0;
        double acc = 0.0;
        for (int64_t i = first; i < count; i += stride) {
            const double v = em_window(em_physical(p, i, s.slope, s.intercept), spec, c);
            if (pass) {
                const double d = em_dsub(v, mean);
                acc = em_dadd(acc, em_dmul(d, d));
            } else {
                acc = em_dadd(acc, v);
            }
        }
        if (first < count) atomicAdd(slot + pass, acc);
    }
}

// ---- the fused kernel ------------------------------------------------------------------

template <bool HALF>
__device__ __forceinline__ void em_store(void* dst, int64_t i, float v) {
    if (HALF)
        static_cast<uint16_t*>(dst)[i] = em_f2h(v);
    else
        static_cast<float*>(dst)[i] = v;
}

template <typename T, bool HALF>
__device__ void em_preprocess_body(const T* src, const EmPreSlice* slices,
                                   const EmPreSpec* spec, const EmTap* taps, const float* scale,
                                   void* dst) {
    const int H = spec->height;
    const int W = spec->width;
    const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
    const int n = static_cast<int>(blockIdx.z);
    if (x >= W || y >= H) return;
    const EmPreSlice s = slices[n];
    const int C = spec->channels;
    const int64_t plane = static_cast<int64_t>(H) * W;
    const int64_t out0 = static_cast<int64_t>(n) * C * plane + static_cast<int64_t>(y) * W + x;

    const bool inside =
        y >= s.top && y < s.top + s.box_h && x >= s.left && x < s.left + s.box_w;
    if (!inside) {
        for (int c = 0; c < C; ++c) em_store<HALF>(dst, out0 + c * plane, spec->pad_value);
        return;
    }
    const EmTap tx = taps[s.tap_x + (x - s.left)];
    const EmTap ty = taps[s.tap_y + (y - s.top)];
    const float ax = tx.a;
    const float ay = ty.a;
    const T* p = src + s.src_offset;
    const int64_t r0 = static_cast<int64_t>(ty.i0) * s.src_w;
    const int64_t r1 = static_cast<int64_t>(ty.i1) * s.src_w;
    const float p00 = em_physical(p, r0 + tx.i0, s.slope, s.intercept);
    const float p01 = em_physical(p, r0 + tx.i1, s.slope, s.intercept);
    const float p10 = em_physical(p, r1 + tx.i0, s.slope, s.intercept);
    const float p11 = em_physical(p, r1 + tx.i1, s.slope, s.intercept);
    for (int c = 0; c < C; ++c) {
        float off = 0.0f;
        float mul = 1.0f;
        if (spec->scale == EM_SCALE_UNIT) {
            off = spec->lo[c];
            mul = spec->inv[c];
        } else if (spec->scale == EM_SCALE_ZSCORE) {
            const int64_t k = (static_cast<int64_t>(n) * C + c) * 2;
            off = scale[k];
            mul = scale[k + 1];
        }
        // Window and scale each tap at the source resolution, then interpolate.
        float q00 = em_window(p00, spec, c);
        float q01 = em_window(p01, spec, c);
        float q10 = em_window(p10, spec, c);
        float q11 = em_window(p11, spec, c);
        if (spec->scale != EM_SCALE_NONE) {
            q00 = em_mul(em_sub(q00, off), mul);
            q01 = em_mul(em_sub(q01, off), mul);
            q10 = em_mul(em_sub(q10, off), mul);
            q11 = em_mul(em_sub(q11, off), mul);
        }
        const float v = em_lerp(em_lerp(q00, q01, ax), em_lerp(q10, q11, ax), ay);
        em_store<HALF>(dst, out0 + c * plane, v);
    }
}

// ---- entry points (C names: pycuda get_function, ctypes) --------------------------------
//
// All share one signature so launchers treat them alike: (src, slices, spec, taps, stats,
// scale, dst, pass). em_preprocess_* ignore stats and pass (they read scale, which
// em_zstats pass 2 wrote); em_zstats_* ignore taps and dst.

#define EM_PRE_ENTRY(suffix, T)                                                          \
    extern "C" __global__ void em_preprocess_##suffix##_f32(                            \
        const void* src, const EmPreSlice* slices, const EmPreSpec* spec,                \
        const EmTap* taps, double* stats, float* scale, void* dst, int pass) {           \
        (void)stats;                                                                     \
        (void)pass;                                                                      \
        em_preprocess_body<T, false>(static_cast<const T*>(src), slices, spec, taps,    \
                                     scale, dst);                                        \
    }                                                                                    \
    extern "C" __global__ void em_preprocess_##suffix##_f16(                            \
        const void* src, const EmPreSlice* slices, const EmPreSpec* spec,                \
        const EmTap* taps, double* stats, float* scale, void* dst, int pass) {           \
        (void)stats;                                                                     \
        (void)pass;                                                                      \
        em_preprocess_body<T, true>(static_cast<const T*>(src), slices, spec, taps,     \
                                    scale, dst);                                         \
    }                                                                                    \
    extern "C" __global__ void em_zstats_##suffix(                                      \
        const void* src, const EmPreSlice* slices, const EmPreSpec* spec,                \
        const EmTap* taps, double* stats, float* scale, void* dst, int pass) {           \
        (void)taps;                                                                      \
        (void)dst;                                                                       \
        em_zstats_body<T>(static_cast<const T*>(src), slices, spec, stats, scale, pass); \
    }

EM_PRE_ENTRY(i16, int16_t)
EM_PRE_ENTRY(u16, uint16_t)
EM_PRE_ENTRY(u8, uint8_t)
EM_PRE_ENTRY(f32, float)

#undef EM_PRE_ENTRY

#if !defined(__CUDACC__)
// Host build only: run one of the entry points above over a whole grid (host_shim.h).
// Returns 0, or -1 for an unknown kernel name.
#include <cstring>

typedef void (*EmPreKernel)(const void*, const EmPreSlice*, const EmPreSpec*, const EmTap*,
                            double*, float*, void*, int);

extern "C" int em_host_launch_preprocess(const char* name, unsigned gx, unsigned gy,
                                         unsigned gz, unsigned bx, unsigned by, unsigned bz,
                                         const void* src, const void* slices, const void* spec,
                                         const void* taps, double* stats, float* scale,
                                         void* dst, int pass) {
    static const struct {
        const char* name;
        EmPreKernel fn;
    } table[] = {
        {"em_preprocess_i16_f32", em_preprocess_i16_f32},
        {"em_preprocess_i16_f16", em_preprocess_i16_f16},
        {"em_preprocess_u16_f32", em_preprocess_u16_f32},
        {"em_preprocess_u16_f16", em_preprocess_u16_f16},
        {"em_preprocess_u8_f32", em_preprocess_u8_f32},
        {"em_preprocess_u8_f16", em_preprocess_u8_f16},
        {"em_preprocess_f32_f32", em_preprocess_f32_f32},
        {"em_preprocess_f32_f16", em_preprocess_f32_f16},
        {"em_zstats_i16", em_zstats_i16},
        {"em_zstats_u16", em_zstats_u16},
        {"em_zstats_u8", em_zstats_u8},
        {"em_zstats_f32", em_zstats_f32},
    };
    for (const auto& entry : table) {
        if (std::strcmp(entry.name, name) == 0) {
            const EmPreSlice* sl = static_cast<const EmPreSlice*>(slices);
            const EmPreSpec* sp = static_cast<const EmPreSpec*>(spec);
            const EmTap* tp = static_cast<const EmTap*>(taps);
            em_host_launch(dim3(gx, gy, gz), dim3(bx, by, bz),
                           [&] { entry.fn(src, sl, sp, tp, stats, scale, dst, pass); });
            return 0;
        }
    }
    return -1;
}
#endif  // !__CUDACC__
