// The 3D path: sliding-window blending into a slab accumulator, the slab decision, and
// trilinear resampling (the input to the model grid, probabilities back to the source).
//
// Matching edgemed.sliding_window (blend, normalise) and edgemed.volume (resample, the
// back-to-source decision) step by step; edgemed/cuda/volume.py packs the parameters and
// drives the launches, and its docstring describes the whole flow.
//
// Memory (all float32 unless said):
//   accumulator  acc (K, acc_slots, acc_h, acc_w) and count (acc_slots, acc_h, acc_w):
//                a ring of planes of the padded volume, plane z at slot z % acc_slots.
//                edgemed.cuda.volume.plan_volume sizes the ring so that the planes any
//                batch of windows touches never wrap onto a plane still live. Zero at the
//                start; the finish kernels zero each plane they consume.
//   windows      EmVolWindow per window of the whole run (its start in the padded
//                volume), uploaded once; a blend launch takes windows
//                [first_window, first_window + n_windows), whose outputs are its src.
//   taps         EmTap per destination column, row and plane (edgemed.cuda.packing's
//                bilinear_taps, the rule of cv2 INTER_LINEAR / torch trilinear
//                align_corners=False), uploaded once; tap_x/tap_y/tap_z say where.
//   other        buffers of planes addressed as slot = (plane - base) mod slots, so one
//                descriptor covers a whole volume (base 0, slots = its planes) and a ring.
//
// Arithmetic (each float32 operation rounded once, em_* from edgemed_kernels.h):
//   blend       acc[k] = acc[k] + out[k] * weight, count = count + weight, per voxel
//               window after window in the launch's order (one thread owns one voxel
//               and loops over the windows: no atomics, the order of
//               sliding_window's loop, so the sums are the very same floats);
//   finish      value[k] = acc[k] / count, then the activation of
//               edgemed.postprocess.activate over k (softmax: max subtracted, exp, sum
//               in k order, one division; sigmoid: 0.5 * (1 + tanh(0.5 * x))), then
//               either the probabilities (em_vol_finish_probs) or the decision
//               (em_vol_finish_labels): argmax, ties to the lowest index, or threshold
//               (label c + 1 for the most probable c when >= threshold, else 0);
//   resample    per channel, a bilinear value on each of the two source planes (the
//               em_lerp form the 2D kernels use for cv2 INTER_LINEAR), then along Z
//               v0 + (v1 - v0) * t, as edgemed.volume blends two resized planes;
//               em_vol_resample_* write the values, em_vol_resample_decide decides them
//               (the probabilities back on the source grid, as edgemed.volume does);
//   gather      em_vol_gather cuts a batch of windows out of the unpadded volume into
//               the engine's input (float32, or float16 rounded to nearest even),
//               numpy.pad's padding applied on the fly (no padded copy).
// expf/tanhf may differ from NumPy's by an ulp: labels can then differ only at near-ties.
//
// Grid: (ceil(cols / bx), ceil(rows / by), planes), blockIdx.z is the plane; the spec's
// plane0/row0/col0 place the launch's box (the blend covers only its windows' box). The
// gather's grid is (ceil(W / bx), ceil(H / by), N * D).
// No shared memory, no __syncthreads, no atomics (host_shim.h runs it thread by thread).
#include "edgemed_kernels.h"

enum { EM_PAD_CONSTANT = 0, EM_PAD_REFLECT = 1, EM_PAD_REPLICATE = 2, EM_PAD_CIRCULAR = 3 };

struct EmVolWindow {
    int32_t z, y, x;  // start of the window in the padded volume
    int32_t reserved;
};
static_assert(sizeof(EmVolWindow) == 16, "EmVolWindow layout changed: update cuda/volume.py");

// Passed BY VALUE (the last kernel argument): no parameter upload per launch. Only int32
// and float members, so its alignment is 4 wherever the argument buffer places it.
struct EmVolSpec {
    int32_t channels;    // K (blend, finish, decide) or C (resample)
    int32_t activation;  // EM_ACT_*
    int32_t decision;    // EM_DECIDE_*
    float threshold;     // float32(threshold)
    int32_t roi_d, roi_h, roi_w;
    int32_t first_window, n_windows;  // blend: the windows of this launch
    int32_t plane0, row0, col0;       // the launch's box: first plane, row, column
    int32_t planes, rows, cols;       //   and its size (threads past it return)
    int32_t acc_slots, acc_h, acc_w;  // the accumulator ring
    int32_t src_base, src_slots, src_h, src_w;  // resample source buffer
    int32_t dst_base, dst_slots, dst_h, dst_w;  // destination buffer
    int32_t crop_z, crop_y, crop_x;  // finish: output voxel = padded voxel - crop
    int32_t out_z;                   // finish: output planes (padded planes past are dropped)
    int32_t tap_x, tap_y, tap_z;     // resample: first tap of the columns, rows, planes
    int32_t pad_mode;                // gather: EM_PAD_*
    float cval;                      // gather: float32(cval) of constant padding
    int32_t out_half;                // gather: 1: write float16 (bits), 0: float32
};
static_assert(sizeof(EmVolSpec) == 144, "EmVolSpec layout changed: update cuda/volume.py");

__device__ __forceinline__ float em_vload(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float em_vload(const uint16_t* p, int64_t i) { return em_h2f(p[i]); }
__device__ __forceinline__ float em_vload(const int16_t* p, int64_t i) {
    return static_cast<float>(p[i]);
}
__device__ __forceinline__ float em_vload(const uint8_t* p, int64_t i) {
    return static_cast<float>(p[i]);
}

// uint16 is float16 bits for the blend's outputs but an integer for resampling input.
struct EmU16 {
    uint16_t v;
};
__device__ __forceinline__ float em_vload(const EmU16* p, int64_t i) {
    return static_cast<float>(p[i].v);
}

__device__ __forceinline__ int64_t em_slot(int64_t plane, int32_t base, int32_t slots) {
    const int64_t s = (plane - base) % slots;
    return s < 0 ? s + slots : s;
}

// ---- blend -------------------------------------------------------------------------------

template <typename T>
__device__ void em_vol_blend_body(const T* out, const float* weights, const EmVolWindow* windows,
                                  float* acc, float* count, const EmVolSpec& s) {
    const int x = s.col0 + static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = s.row0 + static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
    const int z = s.plane0 + static_cast<int>(blockIdx.z);
    if (x >= s.col0 + s.cols || y >= s.row0 + s.rows) return;
    const int64_t roi_plane = static_cast<int64_t>(s.roi_h) * s.roi_w;
    const int64_t roi_voxels = roi_plane * s.roi_d;
    const int64_t acc_plane = static_cast<int64_t>(s.acc_h) * s.acc_w;
    const int64_t a0 = em_slot(z, 0, s.acc_slots) * acc_plane + static_cast<int64_t>(y) * s.acc_w + x;
    const int64_t acc_stride = static_cast<int64_t>(s.acc_slots) * acc_plane;
    const EmVolWindow* win = windows + s.first_window;

    // The count first (it does not depend on k), then each channel: per voxel the
    // additions come window after window, as sliding_window's loop makes them.
    float c = count[a0];
    bool touched = false;
    for (int n = 0; n < s.n_windows; ++n) {
        const int dz = z - win[n].z, dy = y - win[n].y, dx = x - win[n].x;
        if (dz < 0 || dz >= s.roi_d || dy < 0 || dy >= s.roi_h || dx < 0 || dx >= s.roi_w)
            continue;
        c = em_add(c, weights[dz * roi_plane + static_cast<int64_t>(dy) * s.roi_w + dx]);
        touched = true;
    }
    if (!touched) return;
    count[a0] = c;
    for (int k = 0; k < s.channels; ++k) {
        float v = acc[k * acc_stride + a0];
        for (int n = 0; n < s.n_windows; ++n) {
            const int dz = z - win[n].z, dy = y - win[n].y, dx = x - win[n].x;
            if (dz < 0 || dz >= s.roi_d || dy < 0 || dy >= s.roi_h || dx < 0 || dx >= s.roi_w)
                continue;
            const int64_t r = dz * roi_plane + static_cast<int64_t>(dy) * s.roi_w + dx;
            const int64_t o = (static_cast<int64_t>(n) * s.channels + k) * roi_voxels + r;
            v = em_add(v, em_mul(em_vload(out, o), weights[r]));
        }
        acc[k * acc_stride + a0] = v;
    }
}

// ---- activation and decision ---------------------------------------------------------------

// The softmax normalisers of K values read through get(k): the maximum, and the sum of
// exp(v - max) in k order (NumPy's reduction over the leading axis adds plane by plane).
template <typename Get>
__device__ __forceinline__ void em_softmax_norm(int K, Get get, float* mx, float* sum) {
    float m = get(0);
    for (int k = 1; k < K; ++k) {
        const float v = get(k);
        m = v > m ? v : m;
    }
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) acc = em_add(acc, expf(em_sub(get(k), m)));
    *mx = m;
    *sum = acc;
}

__device__ __forceinline__ float em_activate(int activation, float v, float mx, float sum) {
    if (activation == EM_ACT_SOFTMAX) return em_div(expf(em_sub(v, mx)), sum);
    if (activation == EM_ACT_SIGMOID) return em_mul(0.5f, em_add(1.0f, tanhf(em_mul(0.5f, v))));
    return v;
}

// Running decision: strictly greater replaces, so ties keep the lower channel (argmax).
__device__ __forceinline__ void em_best(int k, float p, int* best, float* best_p) {
    if (k == 0 || p > *best_p) {
        *best = k;
        *best_p = p;
    }
}

__device__ __forceinline__ uint8_t em_label(const EmVolSpec& s, int best, float best_p) {
    if (s.decision == EM_DECIDE_THRESHOLD) return static_cast<uint8_t>(best_p >= s.threshold ? best + 1 : 0);
    return static_cast<uint8_t>(best);
}

// ---- finish: normalise, activate, decide (or store probabilities), zero the planes ------

template <bool PROBS>
__device__ void em_vol_finish_body(float* acc, float* count, void* dst, const EmVolSpec& s) {
    const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
    const int z = s.plane0 + static_cast<int>(blockIdx.z);
    if (x >= s.acc_w || y >= s.acc_h) return;
    const int64_t acc_plane = static_cast<int64_t>(s.acc_h) * s.acc_w;
    const int64_t a0 = em_slot(z, 0, s.acc_slots) * acc_plane + static_cast<int64_t>(y) * s.acc_w + x;
    const int64_t acc_stride = static_cast<int64_t>(s.acc_slots) * acc_plane;
    const int K = s.channels;
    const int oz = z - s.crop_z, oy = y - s.crop_y, ox = x - s.crop_x;
    if (oz >= 0 && oz < s.out_z && oy >= 0 && oy < s.dst_h && ox >= 0 && ox < s.dst_w) {
        const float cnt = count[a0];
        auto value = [&](int k) { return em_div(acc[k * acc_stride + a0], cnt); };
        float mx = 0.0f, sum = 1.0f;
        if (s.activation == EM_ACT_SOFTMAX) em_softmax_norm(K, value, &mx, &sum);
        const int64_t dst_plane = static_cast<int64_t>(s.dst_h) * s.dst_w;
        const int64_t d0 = em_slot(oz, s.dst_base, s.dst_slots) * dst_plane +
                           static_cast<int64_t>(oy) * s.dst_w + ox;
        int best = 0;
        float best_p = 0.0f;
        for (int k = 0; k < K; ++k) {
            const float p = em_activate(s.activation, value(k), mx, sum);
            if (PROBS)
                static_cast<float*>(dst)[k * s.dst_slots * dst_plane + d0] = p;
            else
                em_best(k, p, &best, &best_p);
        }
        if (!PROBS) static_cast<uint8_t*>(dst)[d0] = em_label(s, best, best_p);
    }
    // Consumed: later windows reuse this slot for plane z + acc_slots.
    for (int k = 0; k < K; ++k) acc[k * acc_stride + a0] = 0.0f;
    count[a0] = 0.0f;
}

// ---- trilinear resampling ------------------------------------------------------------------

template <typename T>
__device__ __forceinline__ float em_bilinear(const T* plane, int w, const EmTap& tx,
                                             const EmTap& ty) {
    const int64_t r0 = static_cast<int64_t>(ty.i0) * w;
    const int64_t r1 = static_cast<int64_t>(ty.i1) * w;
    return em_lerp(em_lerp(em_vload(plane, r0 + tx.i0), em_vload(plane, r0 + tx.i1), tx.a),
                   em_lerp(em_vload(plane, r1 + tx.i0), em_vload(plane, r1 + tx.i1), tx.a),
                   ty.a);
}

template <typename T, bool DECIDE>
__device__ void em_vol_resample_body(const T* src, const EmTap* taps, void* dst,
                                     const EmVolSpec& s) {
    const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
    const int z = s.plane0 + static_cast<int>(blockIdx.z);
    if (x >= s.dst_w || y >= s.dst_h) return;
    const EmTap tx = taps[s.tap_x + x];
    const EmTap ty = taps[s.tap_y + y];
    const EmTap tz = taps[s.tap_z + z];
    const int64_t src_plane = static_cast<int64_t>(s.src_h) * s.src_w;
    const int64_t src_stride = static_cast<int64_t>(s.src_slots) * src_plane;
    const int64_t p0 = em_slot(tz.i0, s.src_base, s.src_slots) * src_plane;
    const int64_t p1 = em_slot(tz.i1, s.src_base, s.src_slots) * src_plane;
    const bool blend = tz.a != 0.0f && tz.i1 != tz.i0;
    const int64_t dst_plane = static_cast<int64_t>(s.dst_h) * s.dst_w;
    const int64_t d0 = em_slot(z, s.dst_base, s.dst_slots) * dst_plane +
                       static_cast<int64_t>(y) * s.dst_w + x;
    int best = 0;
    float best_p = 0.0f;
    for (int c = 0; c < s.channels; ++c) {
        const T* ch = src + c * src_stride;
        float v = em_bilinear(ch + p0, s.src_w, tx, ty);
        if (blend) {
            const float v1 = em_bilinear(ch + p1, s.src_w, tx, ty);
            v = em_add(v, em_mul(em_sub(v1, v), tz.a));
        }
        if (DECIDE)
            em_best(c, v, &best, &best_p);
        else
            static_cast<float*>(dst)[c * s.dst_slots * dst_plane + d0] = v;
    }
    if (DECIDE) static_cast<uint8_t*>(dst)[d0] = em_label(s, best, best_p);
}

// ---- gather: windows cut from the volume, padding applied on the fly ----------------------

// The source index of padded index i along an axis of n voxels (numpy.pad's modes, also
// for padding wider than the axis: reflect and wrap repeat); -1 = constant padding.
__device__ __forceinline__ int em_pad_index(int i, int n, int mode) {
    if (i >= 0 && i < n) return i;
    if (mode == EM_PAD_CONSTANT) return -1;
    if (mode == EM_PAD_REPLICATE || n == 1) return i < 0 ? 0 : n - 1;
    if (mode == EM_PAD_CIRCULAR) {
        const int r = i % n;
        return r < 0 ? r + n : r;
    }
    const int period = 2 * (n - 1);  // reflect without repeating the edge voxel
    int r = i % period;
    r = r < 0 ? r + period : r;
    return r < n ? r : period - r;
}

// dst (N, C, D, H, W): window n of the launch is windows[first_window + n] of the padded
// volume; the source (C, src_slots, src_h, src_w) is the unpadded volume, which starts at
// (crop_z, crop_y, crop_x) of the padded one. Grid (ceil(W/bx), ceil(H/by), N * D).
__device__ void em_vol_gather_body(const float* src, const EmVolWindow* windows, void* dst,
                                   const EmVolSpec& s) {
    const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
    const int n = static_cast<int>(blockIdx.z) / s.roi_d;
    const int z = static_cast<int>(blockIdx.z) % s.roi_d;
    if (x >= s.roi_w || y >= s.roi_h || n >= s.n_windows) return;
    const EmVolWindow w = windows[s.first_window + n];
    const int sz = em_pad_index(w.z + z - s.crop_z, s.src_slots, s.pad_mode);
    const int sy = em_pad_index(w.y + y - s.crop_y, s.src_h, s.pad_mode);
    const int sx = em_pad_index(w.x + x - s.crop_x, s.src_w, s.pad_mode);
    const bool inside = sz >= 0 && sy >= 0 && sx >= 0;
    const int64_t src_plane = static_cast<int64_t>(s.src_h) * s.src_w;
    const int64_t src_stride = static_cast<int64_t>(s.src_slots) * src_plane;
    const int64_t s0 = inside ? sz * src_plane + static_cast<int64_t>(sy) * s.src_w + sx : 0;
    const int64_t roi_voxels = static_cast<int64_t>(s.roi_d) * s.roi_h * s.roi_w;
    const int64_t d0 = static_cast<int64_t>(n) * s.channels * roi_voxels +
                       (static_cast<int64_t>(z) * s.roi_h + y) * s.roi_w + x;
    for (int c = 0; c < s.channels; ++c) {
        const float v = inside ? src[c * src_stride + s0] : s.cval;
        if (s.out_half)
            static_cast<uint16_t*>(dst)[d0 + c * roi_voxels] = em_f2h(v);
        else
            static_cast<float*>(dst)[d0 + c * roi_voxels] = v;
    }
}

// ---- entry points (C names: pycuda get_function, ctypes) ---------------------------------
//
// One signature for all, so the launchers treat them alike:
//   (src, weights, windows, taps, acc, count, dst, spec)
// each reads what its stage needs and ignores the rest.

#define EM_VOL_ARGS                                                                          \
    const void *src, const float *weights, const EmVolWindow *windows, const EmTap *taps,   \
        float *acc, float *count, void *dst, const EmVolSpec spec

#define EM_VOL_UNUSED                                                                        \
    (void)src;                                                                               \
    (void)weights;                                                                           \
    (void)windows;                                                                           \
    (void)taps;                                                                              \
    (void)acc;                                                                               \
    (void)count;                                                                             \
    (void)dst

extern "C" __global__ void em_vol_blend_f32(EM_VOL_ARGS) {
    EM_VOL_UNUSED;
    em_vol_blend_body<float>(static_cast<const float*>(src), weights, windows, acc, count, spec);
}

extern "C" __global__ void em_vol_blend_f16(EM_VOL_ARGS) {
    EM_VOL_UNUSED;
    em_vol_blend_body<uint16_t>(static_cast<const uint16_t*>(src), weights, windows, acc, count,
                                spec);
}

extern "C" __global__ void em_vol_finish_labels(EM_VOL_ARGS) {
    EM_VOL_UNUSED;
    em_vol_finish_body<false>(acc, count, dst, spec);
}

extern "C" __global__ void em_vol_finish_probs(EM_VOL_ARGS) {
    EM_VOL_UNUSED;
    em_vol_finish_body<true>(acc, count, dst, spec);
}

extern "C" __global__ void em_vol_resample_decide(EM_VOL_ARGS) {
    EM_VOL_UNUSED;
    em_vol_resample_body<float, true>(static_cast<const float*>(src), taps, dst, spec);
}

extern "C" __global__ void em_vol_gather(EM_VOL_ARGS) {
    EM_VOL_UNUSED;
    em_vol_gather_body(static_cast<const float*>(src), windows, dst, spec);
}

#define EM_VOL_RESAMPLE(suffix, T)                                                           \
    extern "C" __global__ void em_vol_resample_##suffix(EM_VOL_ARGS) {                       \
        EM_VOL_UNUSED;                                                                       \
        em_vol_resample_body<T, false>(static_cast<const T*>(src), taps, dst, spec);         \
    }

EM_VOL_RESAMPLE(f32, float)
EM_VOL_RESAMPLE(i16, int16_t)
EM_VOL_RESAMPLE(u16, EmU16)
EM_VOL_RESAMPLE(u8, uint8_t)

#undef EM_VOL_RESAMPLE

#if !defined(__CUDACC__)
// Host build only: run one of the entry points above over a whole grid (host_shim.h).
// The spec comes by pointer (ctypes) and is passed on by value, as the GPU receives it.
// Returns 0, or -1 for an unknown kernel name.
#include <cstring>

typedef void (*EmVolKernel)(const void*, const float*, const EmVolWindow*, const EmTap*, float*,
                            float*, void*, const EmVolSpec);

extern "C" int em_host_launch_volume(const char* name, unsigned gx, unsigned gy, unsigned gz,
                                     unsigned bx, unsigned by, unsigned bz, const void* src,
                                     const void* weights, const void* windows, const void* taps,
                                     float* acc, float* count, void* dst, const void* spec) {
    static const struct {
        const char* name;
        EmVolKernel fn;
    } table[] = {
        {"em_vol_blend_f32", em_vol_blend_f32},
        {"em_vol_blend_f16", em_vol_blend_f16},
        {"em_vol_finish_labels", em_vol_finish_labels},
        {"em_vol_finish_probs", em_vol_finish_probs},
        {"em_vol_resample_decide", em_vol_resample_decide},
        {"em_vol_gather", em_vol_gather},
        {"em_vol_resample_f32", em_vol_resample_f32},
        {"em_vol_resample_i16", em_vol_resample_i16},
        {"em_vol_resample_u16", em_vol_resample_u16},
        {"em_vol_resample_u8", em_vol_resample_u8},
    };
    for (const auto& entry : table) {
        if (std::strcmp(entry.name, name) == 0) {
            EmVolSpec s;
            std::memcpy(&s, spec, sizeof s);
            const float* w = static_cast<const float*>(weights);
            const EmVolWindow* win = static_cast<const EmVolWindow*>(windows);
            const EmTap* tp = static_cast<const EmTap*>(taps);
            em_host_launch(dim3(gx, gy, gz), dim3(bx, by, bz),
                           [&] { entry.fn(src, w, win, tp, acc, count, dst, s); });
            return 0;
        }
    }
    return -1;
}
#endif  // !__CUDACC__
