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

template <class T>
__global__ void coefficients_kernel(const T* __restrict__ grad, const T* __restrict__ out, const T* __restrict__ nx,
                                    const T* __restrict__ ny, T* __restrict__ G, T* __restrict__ W, int64_t B,
                                    int64_t N, int64_t M, int64_t metric) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= B * N * M) return;
  const int64_t row = e / M, b = row / N, j = e % M;
  const T n_row = metric == kCosine ? nx[row] : T(1);
  const T n_col = metric == kCosine ? ny[b * M + j] : T(1);
  G[e] = matrix_coefficient(metric, grad[e], out[e], n_row, n_col);
  W[e] = reduction_weight(metric, grad[e], out[e], n_row, n_col);
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
    // row_factor (math.h): −1/n² where the norm is above eps, else 0.
    a.mul_(at::where(nx > kCosineEps, -nx.square().reciprocal(), at::zeros({}, nx.options())));
    b.mul_(at::where(ny > kCosineEps, -ny.square().reciprocal(), at::zeros({}, ny.options())));
  }
  return {at::baddbmm(x * a.unsqueeze(-1), G, y), at::baddbmm(y * b.unsqueeze(-1), G.transpose(1, 2), x)};
}

at::Tensor pairwise_distance_cuda(const at::Tensor& x_in, const at::Tensor& y_in, int64_t metric) {
  check_pairwise_args(x_in, y_in, metric);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = compute_dtype(x_in);
  const at::Tensor x = kernel_input(x_in, dtype);
  const at::Tensor y = kernel_input(y_in, dtype);
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
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto dtype = compute_dtype(x_in);
  const at::Tensor x = kernel_input(x_in, dtype);
  const at::Tensor y = kernel_input(y_in, dtype);
  const at::Tensor grad = kernel_input(grad_in, dtype);
  const at::Tensor out = kernel_input(out_in, dtype);
  const int64_t B = x.size(0), N = x.size(1), M = y.size(1);
  TORCH_CHECK(grad.sizes() == out.sizes() && out.size(0) == B && out.size(1) == N && out.size(2) == M,
              "_pairwise_distance_backward: grad and out must be [B, N, M] = ", at::IntArrayRef{B, N, M}, "; got ",
              grad.sizes(), " and ", out.sizes());
  const at::Tensor nx = metric_norms(x, metric), ny = metric_norms(y, metric);
  at::Tensor G = grad, W = grad;
  if (metric != kDot && grad.numel() > 0) {
    G = at::empty_like(grad);
    W = at::empty_like(grad);
    constexpr int threads = 256;
    const int64_t blocks = (grad.numel() + threads - 1) / threads;
    AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_backward_cuda", [&] {
      const scalar_t* nxp = metric == kCosine ? nx.data_ptr<scalar_t>() : nullptr;
      const scalar_t* nyp = metric == kCosine ? ny.data_ptr<scalar_t>() : nullptr;
      coefficients_kernel<scalar_t><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          grad.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), nxp, nyp, G.data_ptr<scalar_t>(),
          W.data_ptr<scalar_t>(), B, N, M, metric);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto [gx, gy] = gradients_from_coefficients(G, W, x, y, nx, ny, metric);
  return {gx.to(x_in.scalar_type()), gy.to(y_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fewcore, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
  m.impl("_pairwise_distance_backward", &pairwise_distance_backward_cuda);
}

}  // namespace fewcore
