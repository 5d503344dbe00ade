// episode_attention on the CPU, flash-attention style: per tile of queries × support rows a BLAS
// product, the metric epilogue and an online softmax (math.h); the [N, M] scores are never stored.
// The backward recomputes each tile's probabilities from the saved log-sum-exp. Tasks whose
// scores fit in cache (episode sizes) take a whole-task path instead (see forward_small), whose
// forward can save the metric's values so that the backward does not compute them again.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include <fewcore/math.h>
#include <fewcore/ops.h>

#include "tiles.h"

namespace fewcore {

namespace {

using cpu::ceil_div;
using cpu::kColBlock;
using cpu::kRowBlock;

// One task's inputs in the compute dtype, and its rows' metric norms (null for dot).
template <class T>
struct Task {
  at::Tensor q, s, v;
  const T* nq;
  const T* ns;
};

template <class T>
Task<T> task(const at::Tensor& q, const at::Tensor& s, const at::Tensor& v, const at::Tensor& nq,
             const at::Tensor& ns, int64_t metric, int64_t b) {
  if (metric == kDot) return {q[b], s[b], v[b], nullptr, nullptr};
  return {q[b], s[b], v[b], nq.data_ptr<T>() + b * q.size(1), ns.data_ptr<T>() + b * s.size(1)};
}

// score[j] = attention_score(value[j]) for j < n (in place when score is value); returns their
// maximum.
template <class T, int64_t metric>
FEWCORE_CPU_INLINE T scores_with_max(const T* value, T* score, int64_t n, T inv_temperature) {
  T max = -INFINITY;
#pragma omp simd reduction(max : max)
  for (int64_t j = 0; j < n; ++j) {
    score[j] = attention_score(metric, value[j], inv_temperature);
    max = std::max(max, score[j]);
  }
  return max;
}

// Forward of queries [i0, i1) of one task: out rows and their log-sum-exp.
template <class T, int64_t metric>
FEWCORE_CPU_CLONES void forward_rows(const Task<T>& t, T inv_temperature, int64_t i0, int64_t i1,
                                     at::Tensor out_rows, double* lse) {
  const int64_t rows = i1 - i0, M = t.s.size(0), C = t.v.size(1);
  out_rows.zero_();
  T* acc = out_rows.data_ptr<T>();
  at::Tensor buffer = at::empty({rows, std::min(M, kColBlock)}, t.q.options());
  const int64_t ld = buffer.stride(0);
  std::vector<T> running_max(rows, -INFINITY), running_sum(rows, T(0));
  const at::Tensor q_rows = t.q.slice(0, i0, i1);
  for (int64_t j0 = 0; j0 < M; j0 += kColBlock) {
    const int64_t j1 = std::min(M, j0 + kColBlock), cols = j1 - j0;
    at::Tensor tile = buffer.slice(1, 0, cols);
    cpu::metric_tile<T>(metric, q_rows, t.s.slice(0, j0, j1), t.nq ? t.nq + i0 : nullptr, t.ns ? t.ns + j0 : nullptr,
                        tile);
    T* p = tile.data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) {
      T* row = p + r * ld;
      const T block_max = scores_with_max<T, metric>(row, row, cols, inv_temperature);
      const T scale = online_softmax_rescale(running_max[r], block_max);
      running_sum[r] *= scale;
      for (int64_t k = 0; k < C; ++k) acc[r * C + k] *= scale;
      const T shift = softmax_shift(running_max[r]);
      for (int64_t c = 0; c < cols; ++c) row[c] -= shift;
    }
    tile.exp_();  // ATen's vectorized exp
    for (int64_t r = 0; r < rows; ++r) {
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < cols; ++c) sum += p[r * ld + c];
      running_sum[r] += sum;
    }
    cpu::addmm_nn<T>(out_rows, tile, t.v.slice(0, j0, j1));
  }
  for (int64_t r = 0; r < rows; ++r) {
    const T inv = T(1) / running_sum[r];
    for (int64_t k = 0; k < C; ++k) acc[r * C + k] *= inv;
    lse[r] = log_sum_exp(running_max[r], running_sum[r]);
  }
}

// Small tasks: when a task's [N, M] scores fit in cache, a chunk of tasks is computed as a whole
// — batched BLAS products over all its tasks, and epilogue passes of raw loops over each task's
// scores — instead of tile by tile, whose per-tile tensor slicing and calls cost more than the
// arithmetic of an episode-sized task.
constexpr int64_t kSmallTaskEntries = int64_t{1} << 16;
// Score entries per chunk of tasks: bounds the chunk's [tasks, N, M] buffers (4 MiB in float32).
constexpr int64_t kChunkEntries = int64_t{1} << 20;

// values = q sᵀ for a chunk of tasks, on the transposed view: BLAS takes it as a transposed
// operand, and ATen's copy of a transposed view with short rows costs more than the product saves.
void scores_product(at::Tensor& values, const at::Tensor& q, const at::Tensor& s) {
  at::bmm_out(values, q, s.transpose(1, 2));
}

// Calls fn(b0, b1) for consecutive chunks of the B tasks, each of at most kChunkEntries scores.
template <class Fn>
void for_each_chunk(int64_t B, int64_t task_entries, const Fn& fn) {
  const int64_t per_chunk = std::max<int64_t>(1, kChunkEntries / std::max<int64_t>(task_entries, 1));
  for (int64_t b0 = 0; b0 < B; b0 += per_chunk) fn(b0, std::min(B, b0 + per_chunk));
}

// Null for an undefined tensor (the norms of dot, which needs none).
template <class T>
const T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Calls fn with the metric as a compile-time constant (std::integral_constant), so that the
// per-element switches of math.h fold away and the epilogue loops vectorize.
template <class Fn>
void with_metric(int64_t metric, const Fn& fn) {
  switch (metric) {
    case kSqEuclidean: return fn(std::integral_constant<int64_t, kSqEuclidean>{});
    case kEuclidean: return fn(std::integral_constant<int64_t, kEuclidean>{});
    case kCosine: return fn(std::integral_constant<int64_t, kCosine>{});
    default: return fn(std::integral_constant<int64_t, kDot>{});
  }
}

// A chunk of whole tasks in the compute dtype, contiguous: q [B, N, D], s [B, M, D], and the
// rows' metric norms (null for dot).
template <class T>
struct SmallTasks {
  const T* q;
  const T* s;
  const T* nq;
  const T* ns;
  int64_t N, M, D;
};

// Task b's metric values in place of its q sᵀ in `values` ([B, N, M]).
template <class T, int64_t metric>
FEWCORE_CPU_INLINE void task_metric(const SmallTasks<T>& t, T* values, int64_t b) {
  const int64_t N = t.N, M = t.M, D = t.D;
  cpu::apply_metric<T>(metric, values + b * N * M, M, N, M, t.q + b * N * D, t.s + b * M * D,
                       t.nq ? t.nq + b * N : nullptr, t.ns ? t.ns + b * M : nullptr, D);
}

// Forward pass 1 on tasks [b0, b1): `values` ([B, N, M]) holds q sᵀ on entry and the metric's
// values on exit; `p` gets the scores shifted by their row's maximum, and row_max the maxima.
template <class T, int64_t metric>
FEWCORE_CPU_CLONES void shifted_scores(const SmallTasks<T>& t, T inv_temperature, T* values, T* p, T* row_max,
                                       int64_t b0, int64_t b1) {
  const int64_t N = t.N, M = t.M;
  for (int64_t b = b0; b < b1; ++b) {
    task_metric<T, metric>(t, values, b);
    for (int64_t i = b * N; i < (b + 1) * N; ++i) {
      T* row = p + i * M;
      const T max = scores_with_max<T, metric>(values + i * M, row, M, inv_temperature);
#pragma omp simd
      for (int64_t j = 0; j < M; ++j) row[j] -= max;
      row_max[i] = max;
    }
  }
}

// Forward pass 2 on rows [begin, end) of the exponentiated shifted scores: normalized into
// probabilities, and their log-sum-exp from the row maxima.
template <class T>
FEWCORE_CPU_CLONES void normalize_rows(T* p, const T* row_max, double* lse, int64_t begin, int64_t end, int64_t M) {
  for (int64_t i = begin; i < end; ++i) {
    T* row = p + i * M;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < M; ++j) sum += row[j];
    const T inv = T(1) / sum;
#pragma omp simd
    for (int64_t j = 0; j < M; ++j) row[j] *= inv;
    lse[i] = log_sum_exp(row_max[i], sum);
  }
}

// Forward of whole tasks (contiguous chunks q [b, N, D], s, v; out [b, N, C], lse [b, N] (double),
// and values [b, N, M], which gets the metric's values).
template <class T, int64_t metric>
void forward_small(T inv_temperature, const at::Tensor& q, const at::Tensor& s, const at::Tensor& v, at::Tensor out,
                   at::Tensor lse, at::Tensor values) {
  const int64_t B = q.size(0), N = q.size(1), M = s.size(1);
  const at::Tensor nq = cpu::metric_norms(q, metric), ns = cpu::metric_norms(s, metric);
  const SmallTasks<T> tasks{q.data_ptr<T>(), s.data_ptr<T>(), data_or_null<T>(nq), data_or_null<T>(ns), N, M, q.size(2)};
  scores_product(values, q, s);
  at::Tensor probs = at::empty_like(values);
  T* p = probs.data_ptr<T>();
  std::vector<T> row_max(B * N);
  const int64_t grain = cpu::grain_for(N * M * 8);
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    shifted_scores<T, metric>(tasks, inv_temperature, values.data_ptr<T>(), p, row_max.data(), begin, end);
  });
  probs.exp_();  // ATen's vectorized exp
  at::parallel_for(0, B * N, grain / N + 1, [&](int64_t begin, int64_t end) {
    normalize_rows<T>(p, row_max.data(), lse.data_ptr<double>(), begin, end, M);
  });
  at::bmm_out(out, probs, v);
}

// The small backward's per-chunk arrays ([B, N, M] unless said): the metric's values, the
// probabilities' exponents (then the probabilities), dP = dO vᵀ (then the metric's coefficients
// G), Σ_c dO·O per query [B, N], and the row and column sums of the weights W [B, N], [B, M].
template <class T>
struct SmallBackward {
  T* val;
  T* prob;
  T* coeff;
  T* delta;
  T* row_sum;
  T* col_sum;
};

// Backward pass 1 on tasks [b0, b1): the metric's values (from q sᵀ in w.val, unless the forward
// saved them there), the probabilities' exponents and δ.
template <class T, int64_t metric>
FEWCORE_CPU_CLONES void backward_exponents(const SmallTasks<T>& t, const SmallBackward<T>& w, bool values_saved,
                                           T inv_temperature, const double* lse, const T* dout, const T* out, int64_t C,
                                           int64_t b0, int64_t b1) {
  const int64_t N = t.N, M = t.M;
  for (int64_t b = b0; b < b1; ++b) {
    if (!values_saved) task_metric<T, metric>(t, w.val, b);
    for (int64_t i = b * N; i < (b + 1) * N; ++i) {
      const T* val = w.val + i * M;  // in locals, as in softmax_backward
      T* prob = w.prob + i * M;
      const double row_lse = lse[i];
#pragma omp simd
      for (int64_t j = 0; j < M; ++j) prob[j] = log_probability(attention_score(metric, val[j], inv_temperature), row_lse);
      w.delta[i] = cpu::dot(dout + i * C, out + i * C, C);
    }
  }
}

// Backward pass 2 on tasks [b0, b1): softmax backward dS = P (dP − δ), onto the metric's
// coefficients G (in place of dP) and the row and column sums of the weights W (math.h); then
// the a_i q_i and b_j s_j terms written into dq and ds (the products are added after), and the
// terms of the pairs that need their differences (math.h: gradient_needs_differences).
template <class T, int64_t metric>
FEWCORE_CPU_CLONES void softmax_backward(const SmallTasks<T>& t, const SmallBackward<T>& w, T inv_temperature, T* dq,
                                         T* ds, int64_t b0, int64_t b1) {
  const int64_t N = t.N, M = t.M, D = t.D;
  // Gradient on the metric's value from a gradient on the score: scores are ±value / T.
  const T value_sign = is_distance(metric) ? -inv_temperature : inv_temperature;
  // The rows' metric_norms: cosine's coefficients, and which distance pairs need differences.
  const T* nq = metric == kDot ? nullptr : t.nq;
  const T* ns = metric == kDot ? nullptr : t.ns;
  std::vector<cpu::DifferencePair<T>> pairs;
  for (int64_t b = b0; b < b1; ++b) {
    T* col = w.col_sum + b * M;
    const T* ns_b = ns ? ns + b * M : nullptr;
    pairs.clear();
    for (int64_t i = b * N; i < (b + 1) * N; ++i) {
      // Row pointers in locals: through `w` the compiler must assume each store may change them,
      // and the loop would not vectorize.
      const T* prob = w.prob + i * M;
      const T* val = w.val + i * M;
      T* coeff = w.coeff + i * M;
      const T n_row = nq ? nq[i] : T(1);
      const T delta = w.delta[i];
      T sum = 0;
      int64_t near = 0;
#pragma omp simd reduction(+ : sum, near)
      for (int64_t j = 0; j < M; ++j) {
        const T g = prob[j] * (coeff[j] - delta) * value_sign;
        const T n_col = ns_b ? ns_b[j] : T(1);
        coeff[j] = matrix_coefficient(metric, g, val[j], n_row, n_col);
        const bool differences = gradient_needs_differences(metric, val[j], n_row, n_col);
        const T weight = differences ? T(0) : reduction_weight(metric, g, val[j], n_row, n_col);
        near += differences ? 1 : 0;
        sum += weight;
        col[j] += weight;
      }
      w.row_sum[i] = sum;
      if (near > 0) cpu::take_difference_pairs(metric, i - b * N, 0, coeff, val, n_row, ns_b, M, pairs);
    }
    cpu::scaled_rows<false>(metric, dq + b * N * D, t.q + b * N * D, w.row_sum + b * N, nq ? nq + b * N : nullptr, 0, N,
                            D);
    cpu::scaled_rows<false>(metric, ds + b * M * D, t.s + b * M * D, col, ns_b, 0, M, D);
    cpu::add_difference_terms(pairs, t.q + b * N * D, t.s + b * M * D, dq + b * N * D, ds + b * M * D, D);
  }
}

// Backward of whole tasks (contiguous chunks; dq, ds, dv are written, not accumulated). `saved`:
// the forward's metric values of the chunk, or undefined to recompute them.
template <class T, int64_t metric>
void backward_small(T inv_temperature, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& s,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& saved,
                    at::Tensor dq, at::Tensor ds, at::Tensor dv) {
  const int64_t B = q.size(0), N = q.size(1), M = s.size(1);
  const bool values_saved = saved.defined();
  // Norms for the values (when recomputed), cosine's coefficients and the distances' pairs that
  // need their differences.
  const at::Tensor nq = cpu::metric_norms(q, metric), ns = cpu::metric_norms(s, metric);
  const SmallTasks<T> tasks{q.data_ptr<T>(), s.data_ptr<T>(), data_or_null<T>(nq), data_or_null<T>(ns), N, M, q.size(2)};
  at::Tensor values = saved;
  if (!values_saved) {
    values = at::empty({B, N, M}, q.options());
    scores_product(values, q, s);
  }
  at::Tensor coeffs = at::bmm(dout, v.transpose(1, 2));  // dP = dO vᵀ
  at::Tensor probs = at::empty_like(values);
  std::vector<T> row_sum(B * N, T(0)), col_sum(B * M, T(0)), delta(B * N);
  const SmallBackward<T> work{values.data_ptr<T>(), probs.data_ptr<T>(), coeffs.data_ptr<T>(),
                              delta.data(),         row_sum.data(),      col_sum.data()};
  const int64_t grain = cpu::grain_for(N * M * 8);
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    backward_exponents<T, metric>(tasks, work, values_saved, inv_temperature, lse.data_ptr<double>(), dout.data_ptr<T>(),
                                  out.data_ptr<T>(), v.size(2), begin, end);
  });
  probs.exp_();
  // Pass 2 also writes the tasks' a_i q_i and b_j s_j rows.
  at::parallel_for(0, B, cpu::grain_for(N * M * 8 + (N + M) * q.size(2)), [&](int64_t begin, int64_t end) {
    softmax_backward<T, metric>(tasks, work, inv_temperature, dq.data_ptr<T>(), ds.data_ptr<T>(), begin, end);
  });
  dq.baddbmm_(coeffs, s);
  ds.baddbmm_(coeffs.transpose(1, 2), q);
  at::bmm_out(dv, probs.transpose(1, 2), dout);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> episode_attention_cpu(const at::Tensor& q_in, const at::Tensor& s_in,
                                                                     const at::Tensor& v_in, int64_t metric,
                                                                     double temperature, bool save_values) {
  check_attention_args(q_in, s_in, v_in, metric, temperature);
  const NoAutocast no_autocast;
  const auto dtype = compute_dtype(q_in);
  at::Tensor q = kernel_input(q_in, dtype);
  at::Tensor s = kernel_input(s_in, dtype);
  const at::Tensor v = kernel_input(v_in, dtype);
  if (metric == kCosine) {
    at::Tensor unused;
    q = cosine_in_range(q, unused);
    s = cosine_in_range(s, unused);
  }
  const int64_t B = q.size(0), N = q.size(1);
  at::Tensor out = at::empty({B, N, v.size(2)}, q.options());
  at::Tensor lse = at::empty({B, N}, q.options().dtype(at::kDouble));
  const int64_t M = s.size(1);
  // Saved values come from the small-task path, whatever the size (the caller asked for them).
  const at::Tensor values = save_values ? at::empty({B, N, M}, q.options()) : at::empty({B, 0, 0}, q.options());
  if (save_values || N * M <= kSmallTaskEntries) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "episode_attention_cpu", [&] {
      with_metric(metric, [&](auto constant) {
        for_each_chunk(B, N * M, [&](int64_t b0, int64_t b1) {
          const at::Tensor chunk_values = save_values ? values.slice(0, b0, b1) : at::empty({b1 - b0, N, M}, q.options());
          forward_small<scalar_t, decltype(constant)::value>(scalar_t(1.0 / temperature), q.slice(0, b0, b1),
                                                             s.slice(0, b0, b1), v.slice(0, b0, b1),
                                                             out.slice(0, b0, b1), lse.slice(0, b0, b1), chunk_values);
        });
      });
    });
    return {out.to(q_in.scalar_type()), lse, values};
  }
  const at::Tensor nq = cpu::metric_norms(q, metric), ns = cpu::metric_norms(s, metric);
  const int64_t row_blocks = ceil_div(N, kRowBlock);
  AT_DISPATCH_FLOATING_TYPES(dtype, "episode_attention_cpu", [&] {
    const int64_t work = std::min(N, kRowBlock) * s.size(1) * (q.size(2) + v.size(2));
    with_metric(metric, [&](auto constant) {
      at::parallel_for(0, B * row_blocks, cpu::grain_for(work), [&](int64_t begin, int64_t end) {
        at::AutoDispatchBelowADInplaceOrView guard;  // worker threads start with grad mode on
        for (int64_t index = begin; index < end; ++index) {
          const int64_t b = index / row_blocks, i0 = index % row_blocks * kRowBlock;
          const int64_t i1 = std::min(N, i0 + kRowBlock);
          forward_rows<scalar_t, decltype(constant)::value>(task<scalar_t>(q, s, v, nq, ns, metric, b),
                                                            scalar_t(1.0 / temperature), i0, i1,
                                                            out[b].slice(0, i0, i1),
                                                            lse.data_ptr<double>() + b * N + i0);
        }
      });
    });
  });
  return {out.to(q_in.scalar_type()), lse, values};
}

// Backward over queries [i0, i1) × support rows [j0, j1) of one task, tile by tile. Adds the
// tiles' contributions to dq (when `rows_complete`: the range spans all support rows) and to
// ds and dv (when `cols_complete`: it spans all queries), so that the per-row reductions
// (math.h: a_i, b_j) are finished inside the call and no two threads write the same rows.
template <class T>
FEWCORE_CPU_CLONES void backward_range(const Task<T>& t, int64_t metric, T inv_temperature, const at::Tensor& dout,
                                       const double* lse, const T* delta, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                                       bool rows_complete, bool cols_complete, at::Tensor& dq, at::Tensor& ds,
                                       at::Tensor& dv) {
  // Tile buffers no larger than the range: episode tasks are far smaller than a tile, and
  // allocating (and page-faulting) full tiles per task cost more than the arithmetic.
  const int64_t ld = std::min(j1 - j0, kColBlock);
  at::Tensor buffers = at::empty({3, std::min(i1 - i0, kRowBlock), ld}, t.q.options());
  at::Tensor values = buffers[0], probs = buffers[1], coeffs = buffers[2];
  std::vector<T> row_sum(i1 - i0, T(0)), col_sum(j1 - j0, T(0));
  std::vector<cpu::DifferencePair<T>> pairs;
  // Gradient on the metric's value from a gradient on the score: scores are ±value / T.
  const T value_sign = is_distance(metric) ? -inv_temperature : inv_temperature;
  for (int64_t r0 = i0; r0 < i1; r0 += kRowBlock) {
    const int64_t r1 = std::min(i1, r0 + kRowBlock), rows = r1 - r0;
    const at::Tensor q_rows = t.q.slice(0, r0, r1), dout_rows = dout.slice(0, r0, r1);
    for (int64_t c0 = j0; c0 < j1; c0 += kColBlock) {
      const int64_t c1 = std::min(j1, c0 + kColBlock), cols = c1 - c0;
      const at::Tensor s_cols = t.s.slice(0, c0, c1), v_cols = t.v.slice(0, c0, c1);
      at::Tensor value_tile = values.slice(0, 0, rows).slice(1, 0, cols);
      at::Tensor prob_tile = probs.slice(0, 0, rows).slice(1, 0, cols);
      at::Tensor coeff_tile = coeffs.slice(0, 0, rows).slice(1, 0, cols);
      const T* nq = t.nq ? t.nq + r0 : nullptr;
      const T* ns = t.ns ? t.ns + c0 : nullptr;
      cpu::metric_tile<T>(metric, q_rows, s_cols, nq, ns, value_tile);
      T* val = value_tile.data_ptr<T>();
      T* prob = prob_tile.data_ptr<T>();
      T* coeff = coeff_tile.data_ptr<T>();
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          prob[r * ld + c] = log_probability(attention_score(metric, val[r * ld + c], inv_temperature), lse[r0 + r]);
      prob_tile.exp_();
      cpu::matmul_nt<T>(dout_rows, v_cols, coeff_tile);  // dP = dO vᵀ
      pairs.clear();
      for (int64_t r = 0; r < rows; ++r) {
        const T n_row = nq ? nq[r] : T(1);
        int64_t near = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const int64_t e = r * ld + c;
          // softmax backward: dS = P (dP − Σ_c dO·O), then onto the metric's value.
          const T g = prob[e] * (coeff[e] - delta[r0 + r]) * value_sign;
          const T n_col = ns ? ns[c] : T(1);
          coeff[e] = matrix_coefficient(metric, g, val[e], n_row, n_col);
          const bool differences = gradient_needs_differences(metric, val[e], n_row, n_col);
          const T w = differences ? T(0) : reduction_weight(metric, g, val[e], n_row, n_col);
          near += differences ? 1 : 0;
          row_sum[r0 - i0 + r] += w;
          col_sum[c0 - j0 + c] += w;
        }
        if (near > 0) cpu::take_difference_pairs(metric, r0 + r, c0, coeff + r * ld, val + r * ld, n_row, ns, cols, pairs);
      }
      cpu::add_difference_terms(pairs, t.q.template data_ptr<T>(), t.s.template data_ptr<T>(),
                                rows_complete ? dq.data_ptr<T>() : nullptr, cols_complete ? ds.data_ptr<T>() : nullptr,
                                t.q.size(1));
      if (rows_complete) {
        at::Tensor dq_rows = dq.slice(0, r0, r1);
        cpu::addmm_nn<T>(dq_rows, coeff_tile, s_cols);
      }
      if (cols_complete) {
        at::Tensor ds_rows = ds.slice(0, c0, c1), dv_rows = dv.slice(0, c0, c1);
        cpu::addmm_tn<T>(ds_rows, coeff_tile, q_rows);
        cpu::addmm_tn<T>(dv_rows, prob_tile, dout_rows);
      }
    }
  }
  if (metric == kDot) return;
  const int64_t d = t.q.size(1);
  if (rows_complete)
    cpu::scaled_rows<true>(metric, dq.data_ptr<T>(), t.q.template data_ptr<T>(), row_sum.data(), t.nq, i0, i1, d);
  if (cols_complete)
    cpu::scaled_rows<true>(metric, ds.data_ptr<T>(), t.s.template data_ptr<T>(), col_sum.data(), t.ns, j0, j1, d);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> episode_attention_backward_cpu(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& s_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& values_in, int64_t metric,
    double temperature) {
  check_attention_args(q_in, s_in, v_in, metric, temperature);
  check_backward_args("_episode_attention_backward", "q", q_in, {{"grad_out", &dout_in}, {"out", &out_in}, {"lse", &lse_in},
                                                            {"values", &values_in}});
  const NoAutocast no_autocast;
  const auto dtype = compute_dtype(q_in);
  at::Tensor q = kernel_input(q_in, dtype);
  at::Tensor s = kernel_input(s_in, dtype);
  const at::Tensor v = kernel_input(v_in, dtype);
  at::Tensor q_divisors, s_divisors;  // cosine's rescaled rows (ops.h)
  if (metric == kCosine) {
    q = cosine_in_range(q, q_divisors);
    s = cosine_in_range(s, s_divisors);
  }
  const auto result = [&](const at::Tensor& dq, const at::Tensor& ds, const at::Tensor& dv) {
    return std::make_tuple(cosine_gradient_of_unscaled(dq, q_divisors).to(q_in.scalar_type()),
                           cosine_gradient_of_unscaled(ds, s_divisors).to(s_in.scalar_type()),
                           dv.to(v_in.scalar_type()));
  };
  const at::Tensor dout = kernel_input(dout_in, dtype);
  const at::Tensor lse = kernel_input(lse_in, at::kDouble);
  const int64_t B = q.size(0), N = q.size(1), M = s.size(1);
  TORCH_CHECK(dout.sizes() == out_in.sizes() && dout.size(0) == B && dout.size(1) == N && dout.size(2) == v.size(2),
              "_episode_attention_backward: grad_out and out must be [B, N, C] = ",
              at::IntArrayRef{B, N, v.size(2)}, "; got ", dout.sizes(), " and ", out_in.sizes());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == B && lse.size(1) == N,
              "_episode_attention_backward: lse must be [B, N]; got ", lse.sizes());
  const bool values_saved = values_in.numel() > 0;
  TORCH_CHECK(values_in.dim() == 3 && values_in.size(0) == B &&
                  (values_saved ? values_in.size(1) == N && values_in.size(2) == M : values_in.numel() == 0),
              "_episode_attention_backward: values must be the forward's [B, N, M] = ", at::IntArrayRef{B, N, M},
              " or an empty [B, 0, 0]; got ", values_in.sizes());
  if (values_saved || N * M <= kSmallTaskEntries) {
    const at::Tensor out = kernel_input(out_in, dtype);
    const at::Tensor values = values_saved ? kernel_input(values_in, dtype) : at::Tensor();
    at::Tensor dq = at::empty_like(q), ds = at::empty_like(s), dv = at::empty_like(v);
    AT_DISPATCH_FLOATING_TYPES(dtype, "episode_attention_backward_cpu", [&] {
      with_metric(metric, [&](auto constant) {
        for_each_chunk(B, N * M, [&](int64_t b0, int64_t b1) {
          backward_small<scalar_t, decltype(constant)::value>(
              scalar_t(1.0 / temperature), dout.slice(0, b0, b1), q.slice(0, b0, b1), s.slice(0, b0, b1),
              v.slice(0, b0, b1), out.slice(0, b0, b1), lse.slice(0, b0, b1),
              values_saved ? values.slice(0, b0, b1) : at::Tensor(), dq.slice(0, b0, b1), ds.slice(0, b0, b1),
              dv.slice(0, b0, b1));
        });
      });
    });
    return result(dq, ds, dv);
  }
  // Σ_c dO·O per query: the softmax backward's row term.
  const at::Tensor delta = (dout * kernel_input(out_in, dtype)).sum(-1).contiguous();
  at::Tensor dq = at::zeros_like(q), ds = at::zeros_like(s), dv = at::zeros_like(v);
  const at::Tensor nq = cpu::metric_norms(q, metric), ns = cpu::metric_norms(s, metric);
  // Whole tasks per thread when there are enough tasks (or a task is one tile); otherwise two
  // passes over each task, split by queries (for dq) and by support rows (for ds, dv).
  const bool whole_tasks = B >= at::get_num_threads() || (N <= kRowBlock && M <= kColBlock);
  const int64_t row_blocks = ceil_div(N, kRowBlock), col_blocks = ceil_div(M, kColBlock);
  AT_DISPATCH_FLOATING_TYPES(dtype, "episode_attention_backward_cpu", [&] {
    const scalar_t inv_t = scalar_t(1.0 / temperature);
    auto run = [&](int64_t b, int64_t i0, int64_t i1, int64_t j0, int64_t j1, bool rows_complete, bool cols_complete) {
      at::Tensor dq_b = dq[b], ds_b = ds[b], dv_b = dv[b];
      backward_range<scalar_t>(task<scalar_t>(q, s, v, nq, ns, metric, b), metric, inv_t, dout[b],
                               lse.data_ptr<double>() + b * N, delta.data_ptr<scalar_t>() + b * N, i0, i1, j0, j1,
                               rows_complete, cols_complete, dq_b, ds_b, dv_b);
    };
    // multiply-adds per query × support pair: scores, dP, and the three gradient products
    const int64_t pair_work = 3 * q.size(2) + 2 * v.size(2);
    if (whole_tasks) {
      at::parallel_for(0, B, cpu::grain_for(N * M * pair_work), [&](int64_t begin, int64_t end) {
        at::AutoDispatchBelowADInplaceOrView guard;
        for (int64_t b = begin; b < end; ++b) run(b, 0, N, 0, M, true, true);
      });
      return;
    }
    at::parallel_for(0, B * row_blocks, cpu::grain_for(kRowBlock * M * pair_work), [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView guard;
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / row_blocks, i0 = index % row_blocks * kRowBlock;
        run(b, i0, std::min(N, i0 + kRowBlock), 0, M, true, false);
      }
    });
    at::parallel_for(0, B * col_blocks, cpu::grain_for(N * kColBlock * pair_work), [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView guard;
      for (int64_t index = begin; index < end; ++index) {
        const int64_t b = index / col_blocks, j0 = index % col_blocks * kColBlock;
        run(b, 0, N, j0, std::min(M, j0 + kColBlock), false, true);
      }
    });
  });
  return result(dq, ds, dv);
}

}  // namespace

TORCH_LIBRARY_IMPL(fewcore, CPU, m) {
  m.impl("episode_attention", &episode_attention_cpu);
  m.impl("_episode_attention_backward", &episode_attention_backward_cpu);
}

}  // namespace fewcore
