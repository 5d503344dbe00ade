// pairwise_distance on CUDA: shared-memory tiles of x and y rows, each thread one output; the
// backward's per-element coefficients come from math.h, its products from cuBLAS.
#include <torch/library.h>

#include <fewcore/math.h>
#include <fewcore/ops.h>

#include "common.cuh"

namespace fewcore {

namespace {

constexpr int kTile = 16;   // output tile kTile × kTile, one thread per entry
constexpr int kDepth = 32;  // features per shared-memory step
constexpr int kThreads = 256;  // the elementwise and per-row kernels
static_assert(kTile * kTile <= 1024, "one thread per output entry of a tile: a block has at most 1024 threads");
static_assert((kTile * kDepth) % (kTile * kTile) == 0, "the tile loads split evenly over the block's threads");
static_assert(kThreads % cuda::kWarp == 0, "a block must be whole warps");

template <class T>
__global__ void pairwise_distance_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ nx,
                                         const T* __restrict__ ny, T* __restrict__ out, int64_t N, int64_t M,
                                         int64_t D, int64_t metric) {
  __shared__ T xs[kTile][kDepth + 1];  // +1: no bank conflicts on the column reads
  __shared__ T ys[kTile][kDepth + 1];
  const int64_t tiles_n = cuda::ceil_div(N, kTile), tiles_m = cuda::ceil_div(M, kTile);
  const int64_t b = blockIdx.x / (tiles_n * tiles_m);
  const int64_t i0 = blockIdx.x / tiles_m % tiles_n * kTile, j0 = blockIdx.x % tiles_m * kTile;
  const int tr = threadIdx.x / kTile, tc = threadIdx.x % kTile;
  const T* xb = x + b * N * D;
  const T* yb = y + b * M * D;
  const bool distance = is_distance(metric);
  T acc = 0;
  for (int64_t k0 = 0; k0 < D; k0 += kDepth) {
    // kTile² threads load the kTile × kDepth slices of x and y rows.
    for (int e = threadIdx.x; e < kTile * kDepth; e += kTile * kTile) {
      const int r = e / kDepth, k = e % kDepth;
      xs[r][k] = (i0 + r < N && k0 + k < D) ? xb[(i0 + r) * D + k0 + k] : T(0);
      ys[r][k] = (j0 + r < M && k0 + k < D) ? yb[(j0 + r) * D + k0 + k] : T(0);
    }
    __syncthreads();
    if (distance) {
#pragma unroll 8
      for (int k = 0; k < kDepth; ++k) {
        const T diff = xs[tr][k] - ys[tc][k];
        acc += diff * diff;
      }
    } else {
#pragma unroll 8
      for (int k = 0; k < kDepth; ++k) acc += xs[tr][k] * ys[tc][k];
    }
    __syncthreads();
  }
  const int64_t i = i0 + tr, j = j0 + tc;
  if (i < N && j < M) {
    const T n_row = metric == kCosine ? nx[b * N + i] : T(1);
    const T n_col = metric == kCosine ? ny[b * M + j] : T(1);
    out[(b * N + i) * M + j] = metric_value(metric, acc, n_row, n_col);
  }
}

// G and W (math.h) per entry; nx, ny are the rows' metric_norms (null for dot). The distances'
// pairs that need their differences (math.h: gradient_needs_differences) get G = W = 0 here and
// their terms from difference_terms_kernel.
template <class T>
__global__ void coefficients_kernel(const T* __restrict__ grad, const T* __restrict__ out, const T* __restrict__ nx,
                                    const T* __restrict__ ny, T* __restrict__ G, T* __restrict__ W, int64_t B,
                                    int64_t N, int64_t M, int64_t metric) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= B * N * M) return;
  const int64_t row = e / M, b = row / N, j = e % M;
  const T n_row = metric == kDot ? T(1) : nx[row];
  const T n_col = metric == kDot ? T(1) : ny[b * M + j];
  const bool differences = gradient_needs_differences(metric, out[e], n_row, n_col);
  G[e] = differences ? T(0) : matrix_coefficient(metric, grad[e], out[e], n_row, n_col);
  W[e] = differences ? T(0) : reduction_weight(metric, grad[e], out[e], n_row, n_col);
}

// sums[r] *= row_factor(norms[r]) (math.h) for r < count: ra ⊙ Σ_j W for cosine.
template <class T>
__global__ void row_factor_kernel(T* __restrict__ sums, const T* __restrict__ norms, int64_t count, int64_t metric) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r < count) sums[r] *= row_factor(metric, norms[r]);
}

// The gradient terms of the distances' pairs that coefficients_kernel left out: one block per row
// of x (by_column false: gx_i += Σ_j G_ij (y_j − x_i)) or of y (true: gy_j += Σ_i G_ij (x_i − y_j)).
// The block tests a chunk of pairs in parallel and walks only the chunks that hold such a pair.
template <class T>
__global__ void difference_terms_kernel(const T* __restrict__ grad, const T* __restrict__ out,
                                        const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ sqx,
                                        const T* __restrict__ sqy, T* __restrict__ gx, T* __restrict__ gy, int64_t N,
                                        int64_t M, int64_t D, int64_t metric, bool by_column) {
  const int64_t own_count = by_column ? M : N, other_count = by_column ? N : M;
  const int64_t b = blockIdx.x / own_count, own = blockIdx.x % own_count;
  const T* own_row = (by_column ? y + b * M * D : x + b * N * D) + own * D;
  const T* other_rows = by_column ? x + b * N * D : y + b * M * D;
  T* grad_row = (by_column ? gy + b * M * D : gx + b * N * D) + own * D;
  const auto needs_differences = [&](int64_t o) {
    const int64_t i = by_column ? o : own, j = by_column ? own : o;
    return gradient_needs_differences(metric, out[(b * N + i) * M + j], sqx[b * N + i], sqy[b * M + j]);
  };
  for (int64_t o0 = 0; o0 < other_count; o0 += kThreads) {
    const int64_t o_mine = o0 + threadIdx.x;
    if (!__syncthreads_or(o_mine < other_count && needs_differences(o_mine))) continue;
    const int64_t o1 = o0 + kThreads < other_count ? o0 + kThreads : other_count;
    for (int64_t o = o0; o < o1; ++o) {
      if (!needs_differences(o)) continue;  // the same answer in every thread: no divergence
      const int64_t i = by_column ? o : own, j = by_column ? own : o;
      const int64_t e = (b * N + i) * M + j;
      const T coeff = matrix_coefficient(metric, grad[e], out[e], T(1), T(1));
      for (int64_t k = threadIdx.x; k < D; k += kThreads) grad_row[k] += coeff * (other_rows[o * D + k] - own_row[k]);
    }
  }
}

// gx = G y + (ra ⊙ Σ_j W) x,  gy = Gᵀ x + (rb ⊙ Σ_i W) y  (math.h), the products by cuBLAS.
std::tuple<at::Tensor, at::Tensor> gradients_from_coefficients(const at::Tensor& G, const at::Tensor& W,
                                                              const at::Tensor& x, const at::Tensor& y,
                                                              const at::Tensor& nx, const at::Tensor& ny,
                                                              int64_t metric) {
  if (metric == kDot) return {at::bmm(G, y), at::bmm(G.transpose(1, 2), x)};
  at::Tensor a = W.sum(2);
  at::Tensor b = W.sum(1);
  if (metric == kCosine) {
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "row_factor_cuda", [&] {
      for (auto [sums, norms] : {std::pair<at::Tensor*, const at::Tensor*>{&a, &nx}, {&b, &ny}}) {
        const int64_t count = sums->numel();
        if (count == 0) continue;
        row_factor_kernel<scalar_t><<<(count + kThreads - 1) / kThreads, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            sums->data_ptr<scalar_t>(), norms->data_ptr<scalar_t>(), count, metric);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {at::baddbmm(x * a.unsqueeze(-1), G, y), at::baddbmm(y * b.unsqueeze(-1), G.transpose(1, 2), x)};
}

at::Tensor pairwise_distance_cuda(const at::Tensor& x_in, const at::Tensor& y_in, int64_t metric) {
  check_pairwise_args(x_in, y_in, metric);
  const c10::cuda::CUDAGuard guard(x_in.device());
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
  const at::Tensor norms_x = metric_norms(x, metric), norms_y = metric_norms(y, metric);
  const int64_t blocks = B * ((N + kTile - 1) / kTile) * ((M + kTile - 1) / kTile);
  TORCH_CHECK(blocks < (int64_t{1} << 31), "pairwise_distance: the problem is too large for one launch (", blocks,
              " tiles)");
  AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_cuda", [&] {
    const scalar_t* nxp = metric == kCosine ? norms_x.data_ptr<scalar_t>() : nullptr;
    const scalar_t* nyp = metric == kCosine ? norms_y.data_ptr<scalar_t>() : nullptr;
    pairwise_distance_kernel<scalar_t><<<blocks, kTile * kTile, 0, at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), nxp, nyp, out.data_ptr<scalar_t>(), N, M, D, metric);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cuda(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                    const at::Tensor& y_in, const at::Tensor& out_in,
                                                                    int64_t metric) {
  check_pairwise_args(x_in, y_in, metric);
  check_backward_args("_pairwise_distance_backward", "x", x_in, {{"grad", &grad_in}, {"out", &out_in}});
  const c10::cuda::CUDAGuard guard(x_in.device());
  const NoAutocast no_autocast;
  const auto dtype = compute_dtype(x_in);
  at::Tensor x = kernel_input(x_in, dtype);
  at::Tensor y = kernel_input(y_in, dtype);
  at::Tensor x_divisors, y_divisors;  // cosine's rescaled rows (ops.h)
  if (metric == kCosine) {
    x = cosine_in_range(x, x_divisors);
    y = cosine_in_range(y, y_divisors);
  }
  const at::Tensor grad = kernel_input(grad_in, dtype);
  const at::Tensor out = kernel_input(out_in, dtype);
  const int64_t B = x.size(0), N = x.size(1), M = y.size(1), D = x.size(2);
  TORCH_CHECK(grad.sizes() == out.sizes() && out.size(0) == B && out.size(1) == N && out.size(2) == M,
              "_pairwise_distance_backward: grad and out must be [B, N, M] = ", at::IntArrayRef{B, N, M}, "; got ",
              grad.sizes(), " and ", out.sizes());
  // Cosine's coefficients involve the norms; the distances' squared norms tell which pairs need
  // their differences.
  const at::Tensor nx = metric_norms(x, metric), ny = metric_norms(y, metric);
  at::Tensor G = grad, W = grad;
  const bool distance = is_distance(metric);
  if (metric != kDot && grad.numel() > 0) {
    TORCH_CHECK(B * std::max(N, M) < (int64_t{1} << 31), "_pairwise_distance_backward: B * max(N, M) = ",
                B * std::max(N, M), " is too large for one launch");
    G = at::empty_like(grad);
    W = at::empty_like(grad);
    const int64_t blocks = (grad.numel() + kThreads - 1) / kThreads;
    TORCH_CHECK(blocks < (int64_t{1} << 31), "_pairwise_distance_backward: B * N * M = ", grad.numel(),
                " is too large for one launch");
    AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_backward_cuda", [&] {
      coefficients_kernel<scalar_t><<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          grad.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), nx.data_ptr<scalar_t>(), ny.data_ptr<scalar_t>(),
          G.data_ptr<scalar_t>(), W.data_ptr<scalar_t>(), B, N, M, metric);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto [gx, gy] = gradients_from_coefficients(G, W, x, y, nx, ny, metric);
  if (distance && grad.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_difference_terms_cuda", [&] {
      for (const bool by_column : {false, true}) {
        difference_terms_kernel<scalar_t>
            <<<B * (by_column ? M : N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                grad.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                nx.data_ptr<scalar_t>(), ny.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gy.data_ptr<scalar_t>(), N,
                M, D, metric, by_column);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  }
  return {cosine_gradient_of_unscaled(gx, x_divisors).to(x_in.scalar_type()),
          cosine_gradient_of_unscaled(gy, y_divisors).to(y_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fewcore, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
  m.impl("_pairwise_distance_backward", &pairwise_distance_backward_cuda);
}

}  // namespace fewcore
