// Fused segmentation postprocessing: model logits -> uint8 label mask per slice at the
// slice's source size, so only the masks cross back to the host.
//
// Grid (ceil(max_w/bx), ceil(max_h/by), N), blockIdx.z is the slice, one thread per SOURCE
// pixel (threads past a smaller slice's size return). Matching edgemed.postprocess.segment
// (activate, _to_source, decide) without largest-component filtering, which needs a
// connected-component labelling over the whole mask and stays on the CPU:
//   activation at model resolution, float32: softmax over channels (max subtracted,
//       exp, then the sum taken channel 0, 1, ... in order as NumPy reduces that axis,
//       then one division), sigmoid as 0.5 * (1 + tanh(0.5 * x)), or none;
//   crop to the placement box and bilinear resize to (src_h, src_w) with the same
//       INTER_LINEAR rule as preprocessing (taps per mask column and row from the host,
//       EmTap, clamped to the box's edges), interpolating the activated probabilities
//       of the four taps per channel;
//   decision: argmax (ties to the lowest channel), or threshold: channel c + 1 for the
//       most probable channel when its probability >= float32(threshold), else 0.
// The activation is recomputed for each of the four taps instead of stored: no scratch
// buffer and one launch. expf/tanhf differ from NumPy's by an ulp or two, so labels can
// differ only where two channels' probabilities are within a few ulps (near-ties).
// Logits may be float32 or float16 (an engine with half outputs); both become float32.
#include "edgemed_kernels.h"

__device__ __forceinline__ float em_load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float em_load(const uint16_t* p, int64_t i) { return em_h2f(p[i]); }

template <typename T>
__device__ void em_segment_body(const T* logits, const EmPostSlice* slices,
                                const EmPostSpec* spec, const EmTap* taps, uint8_t* masks) {
    const int x = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
    const int y = static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
    const int n = static_cast<int>(blockIdx.z);
    const EmPostSlice s = slices[n];
    if (x >= s.src_w || y >= s.src_h) return;
    const int C = spec->channels;
    const int W = spec->width;
    const int64_t plane = static_cast<int64_t>(spec->height) * W;
    const T* L = logits + static_cast<int64_t>(n) * C * plane;

    const EmTap tx = taps[s.tap_x + x];
    const EmTap ty = taps[s.tap_y + y];
    const float ax = tx.a;
    const float ay = ty.a;
    int64_t tap[4];
    tap[0] = static_cast<int64_t>(s.top + ty.i0) * W + s.left + tx.i0;
    tap[1] = static_cast<int64_t>(s.top + ty.i0) * W + s.left + tx.i1;
    tap[2] = static_cast<int64_t>(s.top + ty.i1) * W + s.left + tx.i0;
    tap[3] = static_cast<int64_t>(s.top + ty.i1) * W + s.left + tx.i1;

    // Softmax normalisers per tap: the channel maximum and the sum of exponentials.
    float mx[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float sum[4] = {1.0f, 1.0f, 1.0f, 1.0f};
    if (spec->activation == EM_ACT_SOFTMAX) {
        for (int t = 0; t < 4; ++t) {
            float m = em_load(L, tap[t]);
            for (int c = 1; c < C; ++c) {
                const float v = em_load(L, c * plane + tap[t]);
                m = v > m ? v : m;
            }
            float acc = 0.0f;
            for (int c = 0; c < C; ++c) acc = em_add(acc, expf(em_sub(em_load(L, c * plane + tap[t]), m)));
            mx[t] = m;
            sum[t] = acc;
        }
    }

    int best = 0;
    float best_p = 0.0f;
    for (int c = 0; c < C; ++c) {
        float q[4];
        for (int t = 0; t < 4; ++t) {
            const float v = em_load(L, c * plane + tap[t]);
            if (spec->activation == EM_ACT_SOFTMAX)
                q[t] = em_div(expf(em_sub(v, mx[t])), sum[t]);
            else if (spec->activation == EM_ACT_SIGMOID)
                q[t] = em_mul(0.5f, em_add(1.0f, tanhf(em_mul(0.5f, v))));
            else
                q[t] = v;
        }
        const float p = em_lerp(em_lerp(q[0], q[1], ax), em_lerp(q[2], q[3], ax), ay);
        if (c == 0 || p > best_p) {  // strict: ties keep the lower channel (np.argmax)
            best = c;
            best_p = p;
        }
    }
    int label = best;
    if (spec->decision == EM_DECIDE_THRESHOLD) label = best_p >= spec->threshold ? best + 1 : 0;
    masks[s.out_offset + static_cast<int64_t>(y) * s.src_w + x] = static_cast<uint8_t>(label);
}

extern "C" __global__ void em_segment_f32(const void* logits, const EmPostSlice* slices,
                                          const EmPostSpec* spec, const EmTap* taps,
                                          uint8_t* masks) {
    em_segment_body<float>(static_cast<const float*>(logits), slices, spec, taps, masks);
}

extern "C" __global__ void em_segment_f16(const void* logits, const EmPostSlice* slices,
                                          const EmPostSpec* spec, const EmTap* taps,
                                          uint8_t* masks) {
    em_segment_body<uint16_t>(static_cast<const uint16_t*>(logits), slices, spec, taps,
                              masks);
}

#if !defined(__CUDACC__)
// Host build only: run one of the entry points over a whole grid (host_shim.h).
// Returns 0, or -1 for an unknown kernel name.
#include <cstring>

extern "C" int em_host_launch_segment(const char* name, unsigned gx, unsigned gy, unsigned gz,
                                      unsigned bx, unsigned by, unsigned bz, const void* logits,
                                      const void* slices, const void* spec, const void* taps,
                                      uint8_t* masks) {
    void (*fn)(const void*, const EmPostSlice*, const EmPostSpec*, const EmTap*, uint8_t*) =
        nullptr;
    if (std::strcmp(name, "em_segment_f32") == 0) fn = em_segment_f32;
    if (std::strcmp(name, "em_segment_f16") == 0) fn = em_segment_f16;
    if (fn == nullptr) return -1;
    const EmPostSlice* sl = static_cast<const EmPostSlice*>(slices);
    const EmPostSpec* sp = static_cast<const EmPostSpec*>(spec);
    const EmTap* tp = static_cast<const EmTap*>(taps);
    em_host_launch(dim3(gx, gy, gz), dim3(bx, by, bz), [&] { fn(logits, sl, sp, tp, masks); });
    return 0;
}
#endif  // !__CUDACC__
