// Device-independent parts of fewcore's ops: argument checks and row norms.
#include <fewcore/math.h>
#include <fewcore/ops.h>

#include <algorithm>
#include <cmath>

#include "cpu/tiles.h"

namespace fewcore {

namespace {

void check_floating_3d(const char* op, const char* name, const at::Tensor& t, const at::Tensor& first) {
  TORCH_CHECK(t.dim() == 3, op, ": ", name, " must be 3-D [B, rows, features]; got shape ", t.sizes());
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), op, ": ", name,
              " must be a floating-point tensor; got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == first.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but the first argument has ", first.scalar_type());
  TORCH_CHECK(t.device() == first.device(), op, ": ", name, " is on ", t.device(), " but the first argument is on ",
              first.device());
  TORCH_CHECK(t.size(0) == first.size(0), op, ": ", name, " has batch size ", t.size(0),
              " but the first argument has ", first.size(0));
}

void check_metric(const char* op, int64_t metric) {
  TORCH_CHECK(metric >= kSqEuclidean && metric <= kDot, op,
              ": metric code must be 0 (sqeuclidean), 1 (euclidean), 2 (cosine) or 3 (dot); got ", metric);
}

}  // namespace

void check_pairwise_args(const at::Tensor& x, const at::Tensor& y, int64_t metric) {
  check_metric("pairwise_distance", metric);
  check_floating_3d("pairwise_distance", "x", x, x);
  check_floating_3d("pairwise_distance", "y", y, x);
  TORCH_CHECK(x.size(2) == y.size(2), "pairwise_distance: x has ", x.size(2), " features but y has ", y.size(2));
}

void check_attention_args(const at::Tensor& q, const at::Tensor& s, const at::Tensor& v, int64_t metric,
                          double temperature) {
  check_metric("episode_attention", metric);
  check_floating_3d("episode_attention", "q", q, q);
  check_floating_3d("episode_attention", "s", s, q);
  check_floating_3d("episode_attention", "v", v, q);
  TORCH_CHECK(q.size(2) == s.size(2), "episode_attention: q has ", q.size(2), " features but s has ", s.size(2));
  TORCH_CHECK(s.size(1) == v.size(1), "episode_attention: s has ", s.size(1), " support rows but v has ", v.size(1));
  TORCH_CHECK(s.size(1) > 0, "episode_attention: the support set is empty (M = 0)");
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature),
              "episode_attention: temperature must be finite and > 0; got ", temperature);
}

void check_backward_args(const char* op, const char* first_name, const at::Tensor& first,
                         std::initializer_list<std::pair<const char*, const at::Tensor*>> others) {
  for (const auto& [name, tensor] : others) {
    TORCH_CHECK(tensor->device() == first.device(), op, ": ", name, " is on ", tensor->device(), " but ", first_name,
                " is on ", first.device(), "; pass every tensor on one device");
  }
}

at::ScalarType compute_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

namespace {

// Rows below this magnitude keep ‖x‖² and x·y under 2^80 · D, far from float32's 2^128.
constexpr double kCosineRescaleAbove = 1099511627776.0;  // 2^40

// The largest |p[k]| (NaN ignored), in one vectorized pass (cpu/tiles.h: the instruction-set
// clones): ATen's reductions cost far more at episode sizes (linalg_vector_norm with ord=inf took
// 1.3 ms for 32×75×64 floats on one thread, x.abs().amax() 31 µs).
template <class T>
FEWCORE_CPU_CLONES T largest_magnitude(const T* p, int64_t n) {
  T peak = 0;
#pragma omp simd reduction(max : peak)
  for (int64_t k = 0; k < n; ++k) peak = std::max(peak, std::abs(p[k]));
  return peak;
}

// Whether a contiguous CPU tensor may hold a row cosine_in_range must divide (an Inf entry also
// says yes; the per-row test that follows leaves such rows as they are).
bool may_exceed_cosine_range(const at::Tensor& x) {
  bool found = false;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cosine_in_range", [&] {
    found = largest_magnitude(x.data_ptr<scalar_t>(), x.numel()) > scalar_t(kCosineRescaleAbove);
  });
  return found;
}

}  // namespace

at::Tensor cosine_in_range(const at::Tensor& x, at::Tensor& divisors) {
  divisors = at::Tensor();
  if (x.numel() == 0) return x;
  if (x.is_cpu() && !may_exceed_cosine_range(x.contiguous())) return x;
  const at::Tensor peak = x.abs().amax(-1, /*keepdim=*/true);
  // Inf and NaN rows are left as they are: their cosine is NaN, as in the reference.
  const at::Tensor large = peak.gt(kCosineRescaleAbove).logical_and_(peak.isfinite());
  divisors = at::where(large, at::exp2(at::floor(at::log2(peak))), at::ones({}, peak.options()));
  return x / divisors;
}

at::Tensor cosine_gradient_of_unscaled(const at::Tensor& grad, const at::Tensor& divisors) {
  return divisors.defined() ? grad / divisors : grad;
}

at::Tensor kernel_input(const at::Tensor& t, at::ScalarType dtype) { return t.detach().to(dtype).contiguous(); }

at::Tensor metric_norms(const at::Tensor& x, int64_t metric) {
  if (metric == kDot) return at::empty({0}, x.options());
  at::Tensor sumsq = x.square().sum(-1);
  // cosine_norm (math.h), vectorized by ATen.
  return metric == kCosine ? sumsq.sqrt_().clamp_min_(kCosineEps) : sumsq;
}

}  // namespace fewcore
