// episode_attention on CUDA: one block per query row, one warp per (query, support) score, an
// online softmax over chunks of support rows held in shared memory (math.h), so the [N, M]
// scores are never stored. The backward recomputes the probabilities from the saved
// log-sum-exp in two launches: one block per query row (dq), one per support row (ds, dv), so
// every gradient row has a single writer and no atomics are needed.
#include <torch/library.h>

#include <fewcore/math.h>
#include <fewcore/ops.h>

#include "common.cuh"

namespace fewcore {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / cuda::kWarp;
constexpr int kChunk = 32;  // support (or query) rows scored per step
// Each warp scores whole rows (warp_metric's shuffles need every lane), and the forward's
// `threadIdx.x < count` writes one weight per row of a chunk with a single pass of the block.
static_assert(kThreads % cuda::kWarp == 0, "a block must be whole warps");
static_assert(kChunk <= kThreads, "one thread per chunk row writes the chunk's weights");

template <class T>
__global__ void attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ s, const T* __restrict__ v,
                                         const T* __restrict__ nq, const T* __restrict__ ns, T* __restrict__ out,
                                         double* __restrict__ lse, int64_t N, int64_t M, int64_t D, int64_t C,
                                         int64_t metric, T inv_temperature) {
  __shared__ T score[kChunk];
  __shared__ T weight[kChunk];
  const int64_t row = blockIdx.x, b = row / N;
  const int warp = threadIdx.x / cuda::kWarp, lane = threadIdx.x % cuda::kWarp;
  const T* q_row = q + row * D;
  const T* s_task = s + b * M * D;
  const T* v_task = v + b * M * C;
  T* out_row = out + row * C;
  const T n_row = metric == kCosine ? nq[row] : T(1);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) out_row[c] = T(0);
  // Every thread keeps the running state and updates it identically from shared memory.
  T running_max = -INFINITY, running_sum = 0;
  for (int64_t j0 = 0; j0 < M; j0 += kChunk) {
    const int count = static_cast<int>(M - j0 < kChunk ? M - j0 : kChunk);
    for (int jj = warp; jj < count; jj += kWarps) {
      const int64_t j = j0 + jj;
      const T n_col = metric == kCosine ? ns[b * M + j] : T(1);
      const T value = cuda::warp_metric(metric, q_row, s_task + j * D, D, n_row, n_col);
      if (lane == 0) score[jj] = attention_score(metric, value, inv_temperature);
    }
    __syncthreads();
    T block_max = -INFINITY;
    for (int jj = 0; jj < count; ++jj) block_max = score[jj] > block_max ? score[jj] : block_max;
    for (int jj = 0; jj < count; ++jj) block_max = score[jj] != score[jj] ? score[jj] : block_max;  // NaN wins
    const T scale = online_softmax_rescale(running_max, block_max);
    if (threadIdx.x < count) weight[threadIdx.x] = std::exp(score[threadIdx.x] - softmax_shift(running_max));
    __syncthreads();
    T sum = 0;
    for (int jj = 0; jj < count; ++jj) sum += weight[jj];
    running_sum = running_sum * scale + sum;
    for (int64_t c = threadIdx.x; c < C; c += kThreads) {
      T acc = out_row[c] * scale;
      for (int jj = 0; jj < count; ++jj) acc += weight[jj] * v_task[(j0 + jj) * C + c];
      out_row[c] = acc;
    }
    __syncthreads();  // score and weight are rewritten by the next chunk
  }
  for (int64_t c = threadIdx.x; c < C; c += kThreads) out_row[c] /= running_sum;
  if (threadIdx.x == 0) lse[row] = log_sum_exp(running_max, running_sum);
}

// by_support == false: block = query i, loops over support rows j, writes dq_i.
// by_support == true: block = support row j, loops over queries i, writes ds_j and dv_j.
// For the distances the gradient Σ_o G_o (other_o − own) is summed from the differences, which
// never cancel for near-duplicate rows (math.h: gradient_needs_differences); cosine adds its row
// term a·own at the end, dot has none.
template <class T>
__global__ void attention_backward_kernel(const T* __restrict__ q, const T* __restrict__ s, const T* __restrict__ v,
                                          const T* __restrict__ dout, const double* __restrict__ lse,
                                          const T* __restrict__ delta, const T* __restrict__ nq,
                                          const T* __restrict__ ns, T* __restrict__ dq, T* __restrict__ ds,
                                          T* __restrict__ dv, int64_t N, int64_t M, int64_t D, int64_t C,
                                          int64_t metric, T inv_temperature, bool by_support) {
  __shared__ T coeff[kChunk];
  __shared__ T prob[kChunk];
  __shared__ T weight[kChunk];
  const int64_t own_count = by_support ? M : N, other_count = by_support ? N : M;
  const int64_t b = blockIdx.x / own_count, own = blockIdx.x % own_count;
  const int warp = threadIdx.x / cuda::kWarp, lane = threadIdx.x % cuda::kWarp;
  const bool cosine = metric == kCosine;
  // Gradient on the metric's value from a gradient on the score: scores are ±value / T.
  const T value_sign = is_distance(metric) ? -inv_temperature : inv_temperature;
  const T* own_rows = by_support ? s + b * M * D : q + b * N * D;
  const T* other_rows = by_support ? q + b * N * D : s + b * M * D;
  T* own_grad = (by_support ? ds + b * M * D : dq + b * N * D) + own * D;
  T reduction = 0;
  for (int64_t o0 = 0; o0 < other_count; o0 += kChunk) {
    const int count = static_cast<int>(other_count - o0 < kChunk ? other_count - o0 : kChunk);
    for (int oo = warp; oo < count; oo += kWarps) {
      const int64_t i = by_support ? o0 + oo : own, j = by_support ? own : o0 + oo;
      const T n_row = cosine ? nq[b * N + i] : T(1);
      const T n_col = cosine ? ns[b * M + j] : T(1);
      const T value = cuda::warp_metric(metric, q + (b * N + i) * D, s + (b * M + j) * D, D, n_row, n_col);
      const T dprob = cuda::warp_dot(dout + (b * N + i) * C, v + (b * M + j) * C, C);
      if (lane == 0) {
        const T p = std::exp(log_probability(attention_score(metric, value, inv_temperature), lse[b * N + i]));
        // softmax backward: dS = P (dP − Σ_c dO·O), then onto the metric's value.
        const T g = p * (dprob - delta[b * N + i]) * value_sign;
        prob[oo] = p;
        coeff[oo] = matrix_coefficient(metric, g, value, n_row, n_col);
        weight[oo] = reduction_weight(metric, g, value, n_row, n_col);
      }
    }
    __syncthreads();
    const bool distance = is_distance(metric);
    for (int64_t k = threadIdx.x; k < D; k += kThreads) {
      const T own_k = distance ? own_rows[own * D + k] : T(0);
      T acc = 0;
      for (int oo = 0; oo < count; ++oo) acc += coeff[oo] * (other_rows[(o0 + oo) * D + k] - own_k);
      own_grad[k] += acc;
    }
    if (by_support) {
      T* dv_row = dv + (b * M + own) * C;
      for (int64_t c = threadIdx.x; c < C; c += kThreads) {
        T acc = 0;
        for (int oo = 0; oo < count; ++oo) acc += prob[oo] * dout[(b * N + o0 + oo) * C + c];
        dv_row[c] += acc;
      }
    }
    for (int oo = 0; oo < count; ++oo) reduction += weight[oo];
    __syncthreads();  // the chunk's shared arrays are rewritten next
  }
  if (metric != kCosine) return;
  const T own_norm = (by_support ? ns : nq)[blockIdx.x];
  const T factor = row_factor(metric, own_norm) * reduction;
  for (int64_t k = threadIdx.x; k < D; k += kThreads) own_grad[k] += factor * own_rows[own * D + k];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> episode_attention_cuda(const at::Tensor& q_in, const at::Tensor& s_in,
                                                                      const at::Tensor& v_in, int64_t metric,
                                                                      double temperature, bool save_values) {
  check_attention_args(q_in, s_in, v_in, metric, temperature);
  // One query per block streams over the support rows; its scores are never all in one place.
  TORCH_CHECK(!save_values, "episode_attention: save_values is for the CPU kernels; the CUDA backward recomputes the scores");
  const c10::cuda::CUDAGuard guard(q_in.device());
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
  const int64_t B = q.size(0), N = q.size(1), M = s.size(1), D = q.size(2), C = v.size(2);
  at::Tensor out = at::empty({B, N, C}, q.options());
  at::Tensor lse = at::empty({B, N}, q.options().dtype(at::kDouble));
  const at::Tensor values = at::empty({B, 0, 0}, q.options());
  if (B * N == 0) return {out.to(q_in.scalar_type()), lse, values};
  TORCH_CHECK(B * N < (int64_t{1} << 31), "episode_attention: B * N = ", B * N, " is too large for one launch");
  const at::Tensor nq = metric_norms(q, metric), ns = metric_norms(s, metric);
  AT_DISPATCH_FLOATING_TYPES(dtype, "episode_attention_cuda", [&] {
    attention_forward_kernel<scalar_t><<<B * N, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        q.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
        metric == kCosine ? nq.data_ptr<scalar_t>() : nullptr, metric == kCosine ? ns.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), lse.data_ptr<double>(), N, M, D, C, metric, scalar_t(1.0 / temperature));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out.to(q_in.scalar_type()), lse, values};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> episode_attention_backward_cuda(
    const at::Tensor& dout_in, const at::Tensor& q_in, const at::Tensor& s_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& values, int64_t metric,
    double temperature) {
  check_attention_args(q_in, s_in, v_in, metric, temperature);
  check_backward_args("_episode_attention_backward", "q", q_in, {{"grad_out", &dout_in}, {"out", &out_in}, {"lse", &lse_in},
                                                            {"values", &values}});
  TORCH_CHECK(values.numel() == 0, "_episode_attention_backward: the CUDA kernels take no saved values (got ",
              values.sizes(), ")");
  const c10::cuda::CUDAGuard guard(q_in.device());
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
  const int64_t B = q.size(0), N = q.size(1), M = s.size(1), D = q.size(2), C = v.size(2);
  TORCH_CHECK(dout.sizes() == out_in.sizes() && dout.size(0) == B && dout.size(1) == N && dout.size(2) == C,
              "_episode_attention_backward: grad_out and out must be [B, N, C] = ", at::IntArrayRef{B, N, C},
              "; got ", dout.sizes(), " and ", out_in.sizes());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == B && lse.size(1) == N,
              "_episode_attention_backward: lse must be [B, N]; got ", lse.sizes());
  const at::Tensor delta = (dout * kernel_input(out_in, dtype)).sum(-1).contiguous();
  at::Tensor dq = at::zeros_like(q), ds = at::zeros_like(s), dv = at::zeros_like(v);
  if (B * N == 0) return result(dq, ds, dv);
  TORCH_CHECK(B * std::max(N, M) < (int64_t{1} << 31), "_episode_attention_backward: B * max(N, M) = ",
              B * std::max(N, M), " is too large for one launch");
  const at::Tensor nq = metric_norms(q, metric), ns = metric_norms(s, metric);
  AT_DISPATCH_FLOATING_TYPES(dtype, "episode_attention_backward_cuda", [&] {
    for (const bool by_support : {false, true}) {
      attention_backward_kernel<scalar_t>
          <<<B * (by_support ? M : N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              q.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(),
              lse.data_ptr<double>(), delta.data_ptr<scalar_t>(),
              metric == kCosine ? nq.data_ptr<scalar_t>() : nullptr,
              metric == kCosine ? ns.data_ptr<scalar_t>() : nullptr, dq.data_ptr<scalar_t>(), ds.data_ptr<scalar_t>(),
              dv.data_ptr<scalar_t>(), N, M, D, C, metric, scalar_t(1.0 / temperature), by_support);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return result(dq, ds, dv);
}

}  // namespace

TORCH_LIBRARY_IMPL(fewcore, CUDA, m) {
  m.impl("episode_attention", &episode_attention_cuda);
  m.impl("_episode_attention_backward", &episode_attention_backward_cuda);
}

}  // namespace fewcore
