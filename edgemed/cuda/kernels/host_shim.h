// Host shim: lets the CUDA kernel sources in this folder compile as plain C++ (g++),
// so their real bodies run on machines without a GPU (tests/kernels, kernel_bench --host).
//
// Under nvcc (__CUDACC__ defined) this header is empty. Under a host compiler it
//   * defines the CUDA qualifiers away,
//   * provides threadIdx/blockIdx/blockDim/gridDim as thread-local variables, and
//   * em_host_launch(grid, block, body), which walks the WHOLE grid, every block and
//     every thread in it, setting those variables and calling body() once per thread.
// That is a faithful launch only for kernels in which threads never wait for each other:
// the kernels here use no __syncthreads, shared memory or warp intrinsics for exactly
// this reason (their only cross-thread operation is atomicAdd, which is sequentially
// consistent when threads run one after another).
#pragma once

#if !defined(__CUDACC__)

#include <cstdint>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx{0, 0, 0};
inline thread_local dim3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

template <class Body>
inline void em_host_launch(dim3 grid, dim3 block, Body body) {
    gridDim = grid;
    blockDim = block;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3(bx, by, bz);
                for (unsigned int tz = 0; tz < block.z; ++tz)
                    for (unsigned int ty = 0; ty < block.y; ++ty)
                        for (unsigned int tx = 0; tx < block.x; ++tx) {
                            threadIdx = dim3(tx, ty, tz);
                            body();
                        }
            }
}

// Threads run one at a time on the host, so a plain read-modify-write is atomic.
inline double atomicAdd(double* address, double value) {
    const double old = *address;
    *address = old + value;
    return old;
}

#endif  // !__CUDACC__
