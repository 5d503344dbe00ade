// Cache-sized tiles of the CPU kernels: a BLAS product per tile, then a fused epilogue from
// math.h while the tile is still in cache.
#pragma once

#include <ATen/ATen.h>
#include <fewcore/math.h>

#include <vector>

// The kernels' element loops are compiled for several instruction sets and picked at load time:
// the x86-64 baseline's four-float vectors would halve or quarter their speed. The clones are
// chosen by instruction-set feature, not by CPU model ("arch=..."): GCC matches an arch= clone
// with __builtin_cpu_is, which a virtual machine's or a newer model's CPU fails: the 2-core
// machine fewcore is benchmarked on (AVX-512, reported as model 167) matched none and ran the
// baseline clone.
// FEWCORE_CPU_INLINE marks what the clones call, so that it is compiled into each of them.
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define FEWCORE_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FEWCORE_CPU_CLONES
#endif
#if defined(__GNUC__) || defined(__clang__)
#define FEWCORE_CPU_INLINE inline __attribute__((always_inline))
#else
#define FEWCORE_CPU_INLINE inline
#endif

namespace fewcore::cpu {

// Rows of x (queries) and of y (support) per tile: a float32 tile is 128 KiB, within L2.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kColBlock = 512;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// at::parallel_for grain for items of `work` multiply-adds each: a thread gets at least ~2^17
// (~10 µs), so the smallest episode calls stay on the calling thread, where waking the pool would
// cost more than the work. At 2^20 a 32-task episode of 64-d rows ran its passes on one thread
// (distance forward+backward at 32×75×25×64, 2 threads: 0.86-0.90× torch.compile, 1.21-1.24×
// at 2^17; benchmarks/README.md).
inline int64_t grain_for(int64_t work) { return std::max<int64_t>(1, ceil_div(int64_t{1} << 17, std::max<int64_t>(work, 1))); }

// The rows' metric_norms (ops.h) of a contiguous [B, R, D] tensor: [B, R], undefined for dot.
// Defined in pairwise_distance_cpu.cpp (parallel and vectorized, without a [B, R, D] temporary).
at::Tensor metric_norms(const at::Tensor& t, int64_t metric);

// Below this many multiply-adds a tile's products are computed in place: a BLAS call costs more.
constexpr int64_t kDirectTileWork = int64_t{1} << 15;

template <class T>
FEWCORE_CPU_INLINE T dot(const T* a, const T* b, int64_t d) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < d; ++k) acc += a[k] * b[k];
  return acc;
}

template <class T>
FEWCORE_CPU_INLINE T exact_sqdist(const T* a, const T* b, int64_t d) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < d; ++k) {
    const T diff = a[k] - b[k];
    acc += diff * diff;
  }
  return acc;
}

// Products of row-major blocks (unit column stride, any row stride). Below kDirectTileWork
// multiply-adds they are plain loops; larger ones call BLAS. Besides its call overhead, MKL may
// start its own thread team for a tiny product, which on a busy machine waits for time slices
// (inside at::parallel_for workers it runs single-threaded).

// c[r, j] = Σ_k a[r, k] b[j, k]: a [R, K], b [J, K], c [R, J].
template <class T>
FEWCORE_CPU_INLINE void matmul_nt(const at::Tensor& a, const at::Tensor& b, at::Tensor& c) {
  const int64_t rows = a.size(0), cols = b.size(0), depth = a.size(1);
  if (rows * cols * depth > kDirectTileWork) {
    at::mm_out(c, a, b.t());
    return;
  }
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  T* cp = c.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) cp[r * c.stride(0) + j] = dot(ap + r * a.stride(0), bp + j * b.stride(0), depth);
}

// c[r, k] += Σ_j a[r, j] b[j, k]: a [R, J], b [J, K], c [R, K].
template <class T>
FEWCORE_CPU_INLINE void addmm_nn(at::Tensor& c, const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.size(0), inner = a.size(1), cols = b.size(1);
  if (rows * inner * cols > kDirectTileWork) {
    c.addmm_(a, b);
    return;
  }
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  T* cp = c.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) {
    T* c_row = cp + r * c.stride(0);
    for (int64_t j = 0; j < inner; ++j) {
      const T w = ap[r * a.stride(0) + j];
      const T* b_row = bp + j * b.stride(0);
#pragma omp simd
      for (int64_t k = 0; k < cols; ++k) c_row[k] += w * b_row[k];
    }
  }
}

// c[j, k] += Σ_r a[r, j] b[r, k]: a [R, J], b [R, K], c [J, K].
template <class T>
FEWCORE_CPU_INLINE void addmm_tn(at::Tensor& c, const at::Tensor& a, const at::Tensor& b) {
  const int64_t rows = a.size(0), inner = a.size(1), cols = b.size(1);
  if (rows * inner * cols > kDirectTileWork) {
    c.addmm_(a.t(), b);
    return;
  }
  const T* ap = a.data_ptr<T>();
  const T* bp = b.data_ptr<T>();
  T* cp = c.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) {
    const T* b_row = bp + r * b.stride(0);
    for (int64_t j = 0; j < inner; ++j) {
      const T w = ap[r * a.stride(0) + j];
      T* c_row = cp + j * c.stride(0);
#pragma omp simd
      for (int64_t k = 0; k < cols; ++k) c_row[k] += w * b_row[k];
    }
  }
}

// dst[i] = (or += when `accumulate`) row_factor(norms[i]) · sums[i − i0] · src[i] for i in
// [i0, i1), rows of length d: the a_i x_i term of the gradients (math.h). `norms` is read only
// for cosine (may be null else). Dot has no such term: dst is zeroed (not 0 · src, which would
// turn an Inf in src into NaN) or, when accumulating, left as it is.
template <bool accumulate, class T>
FEWCORE_CPU_INLINE void scaled_rows(int64_t metric, T* dst, const T* src, const T* sums, const T* norms, int64_t i0,
                                    int64_t i1, int64_t d) {
  if (metric == kDot) {
    if (!accumulate) std::fill(dst + i0 * d, dst + i1 * d, T(0));
    return;
  }
  for (int64_t i = i0; i < i1; ++i) {
    const T factor = (metric == kCosine ? row_factor(metric, norms[i]) : T(1)) * sums[i - i0];
    T* out = dst + i * d;
    const T* in = src + i * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) out[k] = accumulate ? out[k] + factor * in[k] : factor * in[k];
  }
}

// A pair (row i of x, row j of y) of a distance metric whose gradient term is added from the
// difference of the rows instead of through the expanded form's products (math.h:
// gradient_needs_differences), with its coefficient G_ij.
template <class T>
struct DifferencePair {
  int64_t i, j;
  T coeff;
};

// Moves row i's pairs that need their differences out of the coefficients G_row (columns j0 + j
// for j < M, the metric's values in `value`; sqx, sqy the squared norms) into `pairs`. Their
// weights W_ij must have been left out of the row and column sums already.
template <class T>
void take_difference_pairs(int64_t metric, int64_t i, int64_t j0, T* G_row, const T* value, T sqx, const T* sqy,
                           int64_t M, std::vector<DifferencePair<T>>& pairs) {
  for (int64_t j = 0; j < M; ++j) {
    if (gradient_needs_differences(metric, value[j], sqx, sqy[j])) {
      pairs.push_back({i, j0 + j, G_row[j]});
      G_row[j] = T(0);
    }
  }
}

// Adds each pair's term to the gradients: G_ij (y_j − x_i) to gx_i and G_ij (x_i − y_j) to gy_j
// (skipped where gx or gy is null). x, y, gx, gy are a task's rows of d features.
template <class T>
void add_difference_terms(const std::vector<DifferencePair<T>>& pairs, const T* x, const T* y, T* gx, T* gy,
                          int64_t d) {
  for (const DifferencePair<T>& pair : pairs) {
    const T* xi = x + pair.i * d;
    const T* yj = y + pair.j * d;
    if (gx) {
      T* g = gx + pair.i * d;
      for (int64_t k = 0; k < d; ++k) g[k] += pair.coeff * (yj[k] - xi[k]);
    }
    if (gy) {
      T* g = gy + pair.j * d;
      for (int64_t k = 0; k < d; ++k) g[k] += pair.coeff * (xi[k] - yj[k]);
    }
  }
}

// Turns o[j] = x · y_j (j < M) into the metric in place. nx and ny are the rows' metric_norms
// (ops.h); x and y (the [M, d] rows y_j) are read only to recompute cancelled distances exactly.
template <class T>
FEWCORE_CPU_INLINE void metric_row(int64_t metric, T* o, int64_t M, T nx, const T* ny, const T* x, const T* y,
                                   int64_t d) {
  if (metric == kDot) return;
  if (metric == kCosine) {
#pragma omp simd
    for (int64_t j = 0; j < M; ++j) o[j] = metric_value<T>(kCosine, o[j], nx, ny[j]);
    return;
  }
  // Vectorized expanded form first; the few entries it cannot trust are recomputed after.
  int64_t cancelled = 0;
#pragma omp simd reduction(+ : cancelled)
  for (int64_t j = 0; j < M; ++j) {
    o[j] = expanded_sqdist(o[j], nx, ny[j]);
    cancelled += needs_exact_sqdist(o[j], nx, ny[j]) ? 1 : 0;
  }
  if (cancelled > 0)
    for (int64_t j = 0; j < M; ++j)
      if (needs_exact_sqdist(o[j], nx, ny[j])) o[j] = exact_sqdist(x, y + j * d, d);
  if (metric == kEuclidean) {
#pragma omp simd
    for (int64_t j = 0; j < M; ++j) o[j] = std::sqrt(o[j]);
  }
}

// metric_row over a tile: t[r, c] (row stride ld) holds x_r · y_c for the rows at xp (norms nx)
// and yp (ny), d features each.
template <class T>
FEWCORE_CPU_INLINE void apply_metric(int64_t metric, T* t, int64_t ld, int64_t rows, int64_t cols, const T* xp,
                                     const T* yp, const T* nx, const T* ny, int64_t d) {
  for (int64_t r = 0; r < rows; ++r) metric_row<T>(metric, t + r * ld, cols, nx ? nx[r] : T(0), ny, xp + r * d, yp, d);
}

// tile[r, c] = metric(x_blk[r], y_blk[c]). x_blk [R, D] and y_blk [Cn, D] are contiguous rows;
// tile is an [R, Cn] view with unit column stride; nx/ny point at the blocks' metric_norms.
template <class T>
FEWCORE_CPU_INLINE void metric_tile(int64_t metric, const at::Tensor& x_blk, const at::Tensor& y_blk, const T* nx,
                                    const T* ny, at::Tensor& tile) {
  matmul_nt<T>(x_blk, y_blk, tile);
  apply_metric<T>(metric, tile.data_ptr<T>(), tile.stride(0), tile.size(0), tile.size(1), x_blk.data_ptr<T>(),
                  y_blk.data_ptr<T>(), nx, ny, x_blk.size(1));
}

// Up to this many entries per task, a whole batch's products are one batched BLAS call (one
// call instead of one per task), and the epilogue follows; larger tasks go tile by tile.
constexpr int64_t kBatchedProductEntries = int64_t{1} << 16;

}  // namespace fewcore::cpu
