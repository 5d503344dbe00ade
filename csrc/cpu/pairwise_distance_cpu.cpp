// pairwise_distance on the CPU: forward as one batched BLAS product and a vectorized metric
// epilogue by rows, backward through per-element coefficients (math.h) and two products.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include <fewcore/math.h>
#include <fewcore/ops.h>

#include "tiles.h"

namespace fewcore {

namespace {

// Rows [begin, end) of `rows` ([count, d]) get their metric_norms (ops.h): ‖r‖² or cosine_norm.
template <class T>
FEWCORE_CPU_CLONES void row_norms(int64_t metric, const T* rows, int64_t begin, int64_t end, int64_t d, T* norms) {
  for (int64_t r = begin; r < end; ++r) {
    const T* row = rows + r * d;
    T sumsq = 0;
#pragma omp simd reduction(+ : sumsq)
    for (int64_t k = 0; k < d; ++k) sumsq += row[k] * row[k];
    norms[r] = metric == kCosine ? cosine_norm(sumsq) : sumsq;
  }
}

// The forward's epilogue on rows [begin, end) of the flattened [B·N, M] products.
template <class T>
FEWCORE_CPU_CLONES void finish_rows(int64_t metric, T* out, const T* x, const T* y, const T* nx, const T* ny,
                                    int64_t begin, int64_t end, int64_t N, int64_t M, int64_t D) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t b = r / N;
    cpu::metric_row(metric, out + r * M, M, nx[r], ny + b * M, x + r * D, y + b * M * D, D);
  }
}

at::Tensor pairwise_distance_cpu(const at::Tensor& x_in, const at::Tensor& y_in, int64_t metric) {
  check_pairwise_args(x_in, y_in, metric);
  const NoAutocast no_autocast;
  const auto dtype = compute_dtype(x_in);
  at::Tensor x = kernel_input(x_in, dtype);
  at::Tensor y = kernel_input(y_in, dtype);
  if (metric == kCosine) {
    at::Tensor unused;
    x = cosine_in_range(x, unused);
    y = cosine_in_range(y, unused);
  }
  const int64_t B = x.size(0), N = x.size(1), M = y.size(1), D = x.size(2);
  at::Tensor out = at::empty({B, N, M}, x.options());
  if (out.numel() == 0) return out.to(x_in.scalar_type());
  // One BLAS call for the whole batch, then the metric by rows in parallel: norms, square
  // roots, and an exact recomputation only where the expanded form cancelled.
  at::bmm_out(out, x, y.transpose(1, 2));
  if (metric == kDot) return out.to(x_in.scalar_type());
  const at::Tensor nx = cpu::metric_norms(x, metric), ny = cpu::metric_norms(y, metric);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, B * N, cpu::grain_for(M * 4), [&](int64_t begin, int64_t end) {
      finish_rows<T>(metric, out.data_ptr<T>(), x.data_ptr<T>(), y.data_ptr<T>(), nx.data_ptr<T>(),
                     ny.data_ptr<T>(), begin, end, N, M, D);
    });
  });
  return out.to(x_in.scalar_type());
}

// One row of the small backward's coefficients: G_ij for the M columns, W_ij added to the column
// sums c, and Σ_j W_ij returned; `near` counts the pairs that need their differences (math.h),
// whose weights are left out. n_row and ny are the rows' metric_norms (squared norms for the
// distances, cosine norms for cosine; unused for dot). The metric is a template argument: with a
// run-time metric GCC kept math.h's switch inside the loop and the loop scalar (`perf annotate`:
// vdivss, vaddss).
template <int64_t kMetric, class T>
FEWCORE_CPU_INLINE T coefficient_row(const T* g, const T* o, T n_row, const T* ny, T* G_row, T* c, int64_t M,
                                     int64_t& near) {
  T sum = 0;
  int64_t count = 0;
#pragma omp simd reduction(+ : sum, count)
  for (int64_t j = 0; j < M; ++j) {
    const T n_col = kMetric == kDot ? T(1) : ny[j];
    G_row[j] = matrix_coefficient(kMetric, g[j], o[j], n_row, n_col);
    const bool differences = gradient_needs_differences(kMetric, o[j], n_row, n_col);
    const T w = differences ? T(0) : reduction_weight(kMetric, g[j], o[j], n_row, n_col);
    count += differences ? 1 : 0;
    sum += w;
    c[j] += w;
  }
  near = count;
  return sum;
}

// Tasks [b0, b1) of the small backward: G (math.h) and the row and column sums of the weights W
// (a, c; c starts at zero), then the a_i x_i and b_j y_j terms written into gx and gy (the
// products are added after), and the terms of the pairs that need their differences. nx and ny
// are the rows' metric_norms (null for dot).
template <class T>
FEWCORE_CPU_CLONES void task_coefficients(int64_t metric, const T* grad, const T* out, const T* x, const T* y,
                                          const T* nx, const T* ny, T* G, T* a, T* c, T* gx, T* gy, int64_t b0,
                                          int64_t b1, int64_t N, int64_t M, int64_t D) {
  std::vector<cpu::DifferencePair<T>> pairs;
  for (int64_t b = b0; b < b1; ++b) {
    const T* nx_b = nx ? nx + b * N : nullptr;
    const T* ny_b = ny ? ny + b * M : nullptr;
    T* c_b = c + b * M;
    pairs.clear();
    for (int64_t i = 0; i < N; ++i) {
      const int64_t row = (b * N + i) * M;
      const T* g = grad + row;
      const T* o = out + row;
      T* G_row = G + row;
      const T n_row = nx_b ? nx_b[i] : T(1);
      T sum;
      int64_t near = 0;
      switch (metric) {
        case kSqEuclidean: sum = coefficient_row<kSqEuclidean>(g, o, n_row, ny_b, G_row, c_b, M, near); break;
        case kEuclidean: sum = coefficient_row<kEuclidean>(g, o, n_row, ny_b, G_row, c_b, M, near); break;
        case kCosine: sum = coefficient_row<kCosine>(g, o, n_row, ny_b, G_row, c_b, M, near); break;
        default: sum = coefficient_row<kDot>(g, o, n_row, ny_b, G_row, c_b, M, near);
      }
      a[b * N + i] = sum;
      if (near > 0) cpu::take_difference_pairs(metric, i, 0, G_row, o, n_row, ny_b, M, pairs);
    }
    T* gx_b = gx + b * N * D;
    T* gy_b = gy + b * M * D;
    cpu::scaled_rows<false>(metric, gx_b, x + b * N * D, a + b * N, nx_b, 0, N, D);
    cpu::scaled_rows<false>(metric, gy_b, y + b * M * D, c_b, ny_b, 0, M, D);
    cpu::add_difference_terms(pairs, x + b * N * D, y + b * M * D, gx_b, gy_b, D);
  }
}

// gx_i = Σ_j G_ij y_j + a_i x_i and gy_j = Σ_i G_ij x_i + b_j y_j (math.h): pass 1 fills G and
// W and the gx rows of a row block; pass 2 the gy rows of a column block, so each thread owns
// the rows it writes.
std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                   const at::Tensor& y_in, const at::Tensor& out_in,
                                                                   int64_t metric) {
  check_pairwise_args(x_in, y_in, metric);
  check_backward_args("_pairwise_distance_backward", "x", x_in, {{"grad", &grad_in}, {"out", &out_in}});
  const NoAutocast no_autocast;
  const auto dtype = compute_dtype(x_in);
  at::Tensor x = kernel_input(x_in, dtype);
  at::Tensor y = kernel_input(y_in, dtype);
  at::Tensor x_divisors, y_divisors;  // cosine's rescaled rows (ops.h)
  if (metric == kCosine) {
    x = cosine_in_range(x, x_divisors);
    y = cosine_in_range(y, y_divisors);
  }
  const auto result = [&](const at::Tensor& gx, const at::Tensor& gy) -> std::tuple<at::Tensor, at::Tensor> {
    return {cosine_gradient_of_unscaled(gx, x_divisors).to(x_in.scalar_type()),
            cosine_gradient_of_unscaled(gy, y_divisors).to(y_in.scalar_type())};
  };
  const at::Tensor grad = kernel_input(grad_in, dtype);
  const at::Tensor out = kernel_input(out_in, dtype);
  const int64_t B = x.size(0), N = x.size(1), M = y.size(1), D = x.size(2);
  TORCH_CHECK(grad.sizes() == out.sizes() && out.size(0) == B && out.size(1) == N && out.size(2) == M,
              "_pairwise_distance_backward: grad and out must be [B, N, M] = ", at::IntArrayRef{B, N, M}, "; got ",
              grad.sizes(), " and ", out.sizes());
  if (grad.numel() == 0)
    return {at::zeros_like(x_in, at::MemoryFormat::Contiguous), at::zeros_like(y_in, at::MemoryFormat::Contiguous)};
  const bool dot = metric == kDot;
  // Cosine's coefficients involve the norms; the distances' squared norms tell which pairs need
  // their differences.
  const at::Tensor nx = cpu::metric_norms(x, metric), ny = cpu::metric_norms(y, metric);
  at::Tensor G = dot ? grad : at::empty_like(grad);
  if (N * M <= cpu::kBatchedProductEntries) {
    // Small tasks: coefficients task by task, then the products as batched BLAS calls, each
    // accumulating onto a_i x_i (or b_j y_j) written straight into the gradient (a broadcasting
    // at::mul for those terms cost more than the rest of the backward).
    if (dot) return result(at::bmm(grad, y), at::bmm(grad.transpose(1, 2), x));
    at::Tensor a = at::empty({B, N}, x.options()), c = at::zeros({B, M}, x.options());
    at::Tensor gx = at::empty_like(x), gy = at::empty_like(y);
    AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_backward_cpu", [&] {
      using T = scalar_t;
      // Per task: the coefficients, then the a_i x_i and b_j y_j rows.
      at::parallel_for(0, B, cpu::grain_for(N * M * 4 + (N + M) * D), [&](int64_t begin, int64_t end) {
        task_coefficients<T>(metric, grad.data_ptr<T>(), out.data_ptr<T>(), x.data_ptr<T>(), y.data_ptr<T>(),
                             nx.data_ptr<T>(), ny.data_ptr<T>(), G.data_ptr<T>(),
                             a.data_ptr<T>(), c.data_ptr<T>(), gx.data_ptr<T>(), gy.data_ptr<T>(), begin, end, N, M, D);
      });
    });
    gx.baddbmm_(G, y);
    gy.baddbmm_(G.transpose(1, 2), x);
    return result(gx, gy);
  }
  // The tiles below accumulate into the gradients.
  at::Tensor gx = at::zeros_like(x), gy = at::zeros_like(y);
  at::Tensor W = dot ? grad : at::empty_like(grad);
  const int64_t row_blocks = cpu::ceil_div(N, cpu::kRowBlock), col_blocks = cpu::ceil_div(M, cpu::kColBlock);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_backward_cpu", [&] {
    using T = scalar_t;
    at::parallel_for(0, B * row_blocks, cpu::grain_for(cpu::kRowBlock * M * D), [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView guard;  // worker threads start with grad mode on
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / row_blocks, i0 = index % row_blocks * cpu::kRowBlock;
        const int64_t i1 = std::min(N, i0 + cpu::kRowBlock);
        at::Tensor gx_rows = gx[b].slice(0, i0, i1);
        if (!dot) {
          const T* g = grad.data_ptr<T>();
          const T* o = out.data_ptr<T>();
          const T* nxp = nx.data_ptr<T>();
          const T* nyp = ny.data_ptr<T>() + b * M;
          T* Gp = G.data_ptr<T>();
          T* Wp = W.data_ptr<T>();
          std::vector<T> sums(i1 - i0, T(0));
          std::vector<cpu::DifferencePair<T>> pairs;
          for (int64_t i = i0; i < i1; ++i) {
            const int64_t row = b * N + i;
            const T n_row = nxp[row];
            int64_t near = 0;
            for (int64_t j = 0; j < M; ++j) {
              const int64_t e = row * M + j;
              const T n_col = nyp[j];
              Gp[e] = matrix_coefficient(metric, g[e], o[e], n_row, n_col);
              const bool differences = gradient_needs_differences(metric, o[e], n_row, n_col);
              Wp[e] = differences ? T(0) : reduction_weight(metric, g[e], o[e], n_row, n_col);
              near += differences ? 1 : 0;
              sums[i - i0] += Wp[e];
            }
            if (near > 0) cpu::take_difference_pairs(metric, i, 0, Gp + row * M, o + row * M, n_row, nyp, M, pairs);
          }
          cpu::scaled_rows<true>(metric, gx.data_ptr<T>() + b * N * D, x.data_ptr<T>() + b * N * D, sums.data(),
                                 nxp + b * N, i0, i1, D);
          // The pairs' gy terms are added by the column pass, which finds the same pairs.
          cpu::add_difference_terms<T>(pairs, x.data_ptr<T>() + b * N * D, y.data_ptr<T>() + b * M * D,
                                       gx.data_ptr<T>() + b * N * D, nullptr, D);
        }
        cpu::addmm_nn<T>(gx_rows, G[b].slice(0, i0, i1), y[b]);
      }
    });
    at::parallel_for(0, B * col_blocks, cpu::grain_for(N * cpu::kColBlock * D), [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView guard;
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / col_blocks, j0 = index % col_blocks * cpu::kColBlock;
        const int64_t j1 = std::min(M, j0 + cpu::kColBlock);
        at::Tensor gy_rows = gy[b].slice(0, j0, j1);
        if (!dot) {
          std::vector<T> sums(j1 - j0, T(0));
          const T* Wp = W.data_ptr<T>() + b * N * M;
          const T* g = grad.data_ptr<T>() + b * N * M;
          const T* o = out.data_ptr<T>() + b * N * M;
          const T* nxp = nx.data_ptr<T>() + b * N;
          const T* nyp = ny.data_ptr<T>() + b * M;
          std::vector<cpu::DifferencePair<T>> pairs;
          for (int64_t i = 0; i < N; ++i) {
            for (int64_t j = j0; j < j1; ++j) {
              sums[j - j0] += Wp[i * M + j];
              // The row pass zeroed these pairs' G and W; their coefficient is recomputed.
              if (gradient_needs_differences(metric, o[i * M + j], nxp[i], nyp[j]))
                pairs.push_back({i, j, matrix_coefficient(metric, g[i * M + j], o[i * M + j], nxp[i], nyp[j])});
            }
          }
          cpu::scaled_rows<true>(metric, gy.data_ptr<T>() + b * M * D, y.data_ptr<T>() + b * M * D, sums.data(),
                                 nyp, j0, j1, D);
          cpu::add_difference_terms<T>(pairs, x.data_ptr<T>() + b * N * D, y.data_ptr<T>() + b * M * D, nullptr,
                                       gy.data_ptr<T>() + b * M * D, D);
        }
        cpu::addmm_tn<T>(gy_rows, G[b].slice(1, j0, j1), x[b]);
      }
    });
  });
  return result(gx, gy);
}

}  // namespace

// The contiguous [B, R, D] tensor's metric_norms ([B, R]; ops.h), by rows in parallel with no
// [B, R, D] temporary; undefined for dot, which needs none. Shared with episode_attention_cpu.cpp.
at::Tensor cpu::metric_norms(const at::Tensor& t, int64_t metric) {
  TORCH_INTERNAL_ASSERT(t.dim() == 3 && t.is_contiguous(), "metric_norms: expects a contiguous [B, R, D] tensor");
  if (metric == kDot) return {};
  const int64_t rows = t.size(0) * t.size(1), d = t.size(2);
  at::Tensor norms = at::empty({t.size(0), t.size(1)}, t.options());
  AT_DISPATCH_FLOATING_TYPES(t.scalar_type(), "metric_norms_cpu", [&] {
    const scalar_t* p = t.data_ptr<scalar_t>();
    scalar_t* n = norms.data_ptr<scalar_t>();
    at::parallel_for(0, rows, cpu::grain_for(d), [&](int64_t begin, int64_t end) {
      row_norms<scalar_t>(metric, p, begin, end, d, n);
    });
  });
  return norms;
}

TORCH_LIBRARY_IMPL(fewcore, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("_pairwise_distance_backward", &pairwise_distance_backward_cpu);
}

}  // namespace fewcore
