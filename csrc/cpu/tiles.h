// Cache-sized tiles of the CPU kernels: a BLAS product per tile, then a fused epilogue from
// math.h while the tile is still in cache.
#pragma once

#include <ATen/ATen.h>
#include <fewcore/math.h>

namespace fewcore::cpu {

// Rows of x (queries) and of y (support) per tile: a float32 tile is 128 KiB, within L2.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kColBlock = 512;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <class T>
T exact_sqdist(const T* a, const T* b, int64_t d) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < d; ++k) {
    const T diff = a[k] - b[k];
    acc += diff * diff;
  }
  return acc;
}

// tile[r, c] = metric(x_blk[r], y_blk[c]). x_blk [R, D] and y_blk [Cn, D] are contiguous rows;
// tile is an [R, Cn] view with unit column stride; nx/ny point at the blocks' metric_norms.
template <class T>
void metric_tile(int64_t metric, const at::Tensor& x_blk, const at::Tensor& y_blk, const T* nx, const T* ny,
                 at::Tensor& tile) {
  at::mm_out(tile, x_blk, y_blk.t());
  if (metric == kDot) return;
  const int64_t rows = tile.size(0), cols = tile.size(1), ld = tile.stride(0), d = x_blk.size(1);
  T* t = tile.data_ptr<T>();
  const T* xp = x_blk.data_ptr<T>();
  const T* yp = y_blk.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) {
    T* row = t + r * ld;
    if (metric == kCosine) {
      for (int64_t c = 0; c < cols; ++c) row[c] = metric_value<T>(kCosine, row[c], nx[r], ny[c]);
      continue;
    }
    for (int64_t c = 0; c < cols; ++c) {
      T sq = expanded_sqdist(row[c], nx[r], ny[c]);
      if (needs_exact_sqdist(sq, nx[r], ny[c])) sq = exact_sqdist(xp + r * d, yp + c * d, d);
      row[c] = metric_value<T>(metric, sq, T(1), T(1));
    }
  }
}

}  // namespace fewcore::cpu
