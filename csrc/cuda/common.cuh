// Device helpers shared by fewcore's CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <fewcore/math.h>

namespace fewcore::cuda {

constexpr int kWarp = 32;
// warp_sum's full-mask shuffles and the kernels' warp arithmetic assume 32 lanes.
static_assert(kWarp == 32, "CUDA warps have 32 lanes");

__device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T>
__device__ __forceinline__ T warp_sum(T value) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// The metric between rows a and b of length d, computed by one warp (every lane gets it).
// Distances are summed from the differences, so they never cancel.
template <class T>
__device__ T warp_metric(int64_t metric, const T* a, const T* b, int64_t d, T na, T nb) {
  const int lane = threadIdx.x % kWarp;
  T partial = 0;
  if (is_distance(metric)) {
    for (int64_t k = lane; k < d; k += kWarp) {
      const T diff = a[k] - b[k];
      partial += diff * diff;
    }
  } else {
    for (int64_t k = lane; k < d; k += kWarp) partial += a[k] * b[k];
  }
  return metric_value(metric, warp_sum(partial), na, nb);
}

// The dot product of rows a and b of length d by one warp (every lane gets it).
template <class T>
__device__ T warp_dot(const T* a, const T* b, int64_t d) {
  T partial = 0;
  for (int64_t k = threadIdx.x % kWarp; k < d; k += kWarp) partial += a[k] * b[k];
  return warp_sum(partial);
}

}  // namespace fewcore::cuda
