// Per-element arithmetic of fewcore's ops, shared by the CPU and CUDA kernels so that the CPU
// tests exercise the very formulas the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>

// Always inlined: the CPU kernels' vectorized loops are compiled for several instruction sets
// (target_clones), and GCC does not inline a plain inline function into such a clone; each
// element then cost an out-of-line call and the loops stayed scalar.
#ifdef __CUDACC__
#define FEWCORE_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__) || defined(__clang__)
#define FEWCORE_HD inline __attribute__((always_inline))
#else
#define FEWCORE_HD inline
#endif

namespace fewcore {

// Integer codes of the metrics; the order matches fewcore.ops._reference.METRICS.
enum Metric : int64_t { kSqEuclidean = 0, kEuclidean = 1, kCosine = 2, kDot = 3 };

// A vector shorter than this is treated as having this norm, so the cosine of a zero vector is 0.
constexpr double kCosineEps = 1e-8;

// ‖x‖² + ‖y‖² − 2x·y loses about log2(1/r) bits when the distance is a fraction r of
// ‖x‖² + ‖y‖²; below this fraction the kernels recompute the distance from the differences.
constexpr double kCancellationRatio = 1.0 / 16.0;

FEWCORE_HD bool is_distance(int64_t metric) { return metric == kSqEuclidean || metric == kEuclidean; }

// max(‖x‖, eps) from ‖x‖².
template <class T>
FEWCORE_HD T cosine_norm(T sumsq) {
  const T norm = std::sqrt(sumsq);
  return norm > T(kCosineEps) ? norm : T(kCosineEps);
}

// The squared distance from the expanded form, and whether it must be recomputed exactly.
// NaN and the Inf − Inf of infinite inputs also ask for the exact (reference) arithmetic.
template <class T>
FEWCORE_HD T expanded_sqdist(T dot, T sqx, T sqy) { return sqx + sqy - T(2) * dot; }

template <class T>
FEWCORE_HD bool needs_exact_sqdist(T expanded, T sqx, T sqy) {
  return !(expanded > T(kCancellationRatio) * (sqx + sqy));
}

// The gradients' expanded form (gx_i = Σ_j G_ij y_j + a_i x_i below) cancels the same way: for a
// distance metric it stands for Σ_j G_ij (y_j − x_i), with an error of about eps·‖x‖·|G_ij| per
// pair (for euclidean G_ij = g/d, so eps·‖x‖/d relative). The pairs the forward recomputes from the
// differences — the same test on the exact squared distance — take their gradient term from the
// differences too. `value` is the metric's value; sqx, sqy the rows' squared norms.
template <class T>
FEWCORE_HD bool gradient_needs_differences(int64_t metric, T value, T sqx, T sqy) {
  if (metric != kSqEuclidean && metric != kEuclidean) return false;
  return needs_exact_sqdist(metric == kEuclidean ? value * value : value, sqx, sqy);
}

// The metric's value from an exact squared distance (distance metrics) or a dot product.
// `nx`, `ny` are the cosine norms (cosine_norm); other metrics ignore them.
template <class T>
FEWCORE_HD T metric_value(int64_t metric, T sqdist_or_dot, T nx, T ny) {
  switch (metric) {
    case kSqEuclidean: return sqdist_or_dot;
    case kEuclidean: return std::sqrt(sqdist_or_dot);
    case kCosine: return sqdist_or_dot / (nx * ny);
    default: return sqdist_or_dot;
  }
}

// The attention score: similarities as they are, distances negated, all divided by T.
template <class T>
FEWCORE_HD T attention_score(int64_t metric, T value, T inv_temperature) {
  return (is_distance(metric) ? -value : value) * inv_temperature;
}

// Backward of value = metric(x_i, y_j) for an upstream gradient g on the value:
//   ∂/∂x_i = G x-part:  gx_i = Σ_j G_ij y_j + a_i x_i,   gy_j = Σ_i G_ij x_i + b_j y_j,
// with a_i = ra_i Σ_j W_ij and b_j = rb_j Σ_i W_ij. `matrix_coefficient` gives G_ij,
// `reduction_weight` W_ij, `row_factor` ra (or rb with the column's norm).
template <class T>
FEWCORE_HD T matrix_coefficient(int64_t metric, T g, T value, T nx, T ny) {
  switch (metric) {
    case kSqEuclidean: return T(-2) * g;
    case kEuclidean: return value > T(0) ? -g / value : T(0);  // subgradient 0 at distance 0
    case kCosine: return g / (nx * ny);
    default: return g;
  }
}

template <class T>
FEWCORE_HD T reduction_weight(int64_t metric, T g, T value, T nx, T ny) {
  switch (metric) {
    case kSqEuclidean:
    case kEuclidean: return -matrix_coefficient(metric, g, value, nx, ny);
    case kCosine: return g * value;
    default: return T(0);
  }
}

// ra_i for a row with cosine norm `n` (other metrics: 1).
template <class T>
FEWCORE_HD T row_factor(int64_t metric, T n) {
  if (metric != kCosine) return T(1);
  // Below eps the norm is the constant eps, so the normalization has no gradient of its own.
  return n > T(kCosineEps) ? -T(1) / (n * n) : T(0);
}

// Online softmax: fold a block whose maximum is `block_max` into the running (max, sum).
// Returns the factor by which the running sum and accumulator must be rescaled.
template <class T>
FEWCORE_HD T online_softmax_rescale(T& running_max, T block_max) {
  const T new_max = running_max > block_max ? running_max : block_max;
  // exp(-inf - -inf) would be NaN: an empty running state has nothing to rescale.
  const T scale = running_max == -INFINITY ? T(0) : std::exp(running_max - new_max);
  running_max = new_max;
  return scale;
}

// What the scores are shifted by before exp: the running maximum, or 0 while every score so far
// is −inf (masked support items), whose exp(−inf − −inf) would be NaN instead of 0.
template <class T>
FEWCORE_HD T softmax_shift(T running_max) {
  return running_max == -INFINITY ? T(0) : running_max;
}

// The log-sum-exp of a row, max + log Σ exp(score − max), is kept in double even for float32
// scores: in float32, max + log Σ rounds to the ulp of max (0.06 at |score| ≈ 1e6), and the
// backward's probabilities exp(score − lse) would no longer sum to 1.
template <class T>
FEWCORE_HD double log_sum_exp(T max, T sum) {
  return static_cast<double>(max) + std::log(static_cast<double>(sum));
}

// The backward's log-probability score − lse. The score is subtracted in double, which also keeps
// the compiler from fusing the score's product (value / T) with the subtraction into one FMA: the
// forward rounds that product before subtracting, and the two results differ by up to half an
// ulp of the score (exp of 30 at |score| ≈ 1e9).
template <class T>
FEWCORE_HD T log_probability(T score, double lse) {
  return static_cast<T>(static_cast<double>(score) - lse);
}

}  // namespace fewcore
