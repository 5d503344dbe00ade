// pairwise_distance on the CPU: forward in BLAS tiles with a fused epilogue, backward through
// per-element coefficients (math.h) and two batched products (common.cpp).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <fewcore/math.h>
#include <fewcore/ops.h>

#include "tiles.h"

namespace fewcore {

namespace {

at::Tensor pairwise_distance_cpu(const at::Tensor& x_in, const at::Tensor& y_in, int64_t metric) {
  check_pairwise_args(x_in, y_in, metric);
  const auto dtype = compute_dtype(x_in);
  const at::Tensor x = x_in.detach().to(dtype).contiguous();
  const at::Tensor y = y_in.detach().to(dtype).contiguous();
  const int64_t B = x.size(0), N = x.size(1), M = y.size(1);
  at::Tensor out = at::empty({B, N, M}, x.options());
  if (out.numel() == 0) return out.to(x_in.scalar_type());
  const at::Tensor nx = metric_norms(x, metric);
  const at::Tensor ny = metric_norms(y, metric);
  const int64_t row_blocks = cpu::ceil_div(N, cpu::kRowBlock), col_blocks = cpu::ceil_div(M, cpu::kColBlock);
  AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_cpu", [&] {
    const scalar_t* nxp = metric == kDot ? nullptr : nx.data_ptr<scalar_t>();
    const scalar_t* nyp = metric == kDot ? nullptr : ny.data_ptr<scalar_t>();
    at::parallel_for(0, B * row_blocks * col_blocks, 1, [&](int64_t begin, int64_t end) {
      // Worker threads start with grad mode on; the tiles are plain arithmetic.
      at::AutoDispatchBelowADInplaceOrView guard;
      for (int64_t tile_index = begin; tile_index < end; ++tile_index) {
        const int64_t b = tile_index / (row_blocks * col_blocks);
        const int64_t i0 = (tile_index / col_blocks % row_blocks) * cpu::kRowBlock;
        const int64_t j0 = tile_index % col_blocks * cpu::kColBlock;
        const int64_t i1 = std::min(N, i0 + cpu::kRowBlock), j1 = std::min(M, j0 + cpu::kColBlock);
        at::Tensor tile = out[b].slice(0, i0, i1).slice(1, j0, j1);
        cpu::metric_tile<scalar_t>(metric, x[b].slice(0, i0, i1), y[b].slice(0, j0, j1),
                                   nxp ? nxp + b * N + i0 : nullptr, nyp ? nyp + b * M + j0 : nullptr, tile);
      }
    });
  });
  return out.to(x_in.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> pairwise_distance_backward_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                                   const at::Tensor& y_in, const at::Tensor& out_in,
                                                                   int64_t metric) {
  check_pairwise_args(x_in, y_in, metric);
  const auto dtype = compute_dtype(x_in);
  const at::Tensor x = x_in.detach().to(dtype).contiguous();
  const at::Tensor y = y_in.detach().to(dtype).contiguous();
  const at::Tensor grad = grad_in.detach().to(dtype).contiguous();
  const at::Tensor out = out_in.detach().to(dtype).contiguous();
  TORCH_CHECK(grad.sizes() == out.sizes() && out.size(0) == x.size(0) && out.size(1) == x.size(1) &&
                  out.size(2) == y.size(1),
              "_pairwise_distance_backward: grad and out must be [B, N, M] = ", at::IntArrayRef{x.size(0), x.size(1), y.size(1)},
              "; got ", grad.sizes(), " and ", out.sizes());
  const at::Tensor nx = metric_norms(x, metric);
  const at::Tensor ny = metric_norms(y, metric);
  at::Tensor G = grad, W = grad;
  if (metric != kDot) {
    G = at::empty_like(grad);
    W = at::empty_like(grad);
    const int64_t N = x.size(1), M = y.size(1);
    AT_DISPATCH_FLOATING_TYPES(dtype, "pairwise_distance_backward_cpu", [&] {
      const scalar_t* g = grad.data_ptr<scalar_t>();
      const scalar_t* o = out.data_ptr<scalar_t>();
      const scalar_t* nxp = nx.data_ptr<scalar_t>();
      const scalar_t* nyp = ny.data_ptr<scalar_t>();
      scalar_t* Gp = G.data_ptr<scalar_t>();
      scalar_t* Wp = W.data_ptr<scalar_t>();
      const bool cosine = metric == kCosine;
      at::parallel_for(0, x.size(0) * N, 16, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / N;
          const scalar_t n_row = cosine ? nxp[row] : scalar_t(1);
          for (int64_t j = 0; j < M; ++j) {
            const int64_t e = row * M + j;
            const scalar_t n_col = cosine ? nyp[b * M + j] : scalar_t(1);
            Gp[e] = matrix_coefficient(metric, g[e], o[e], n_row, n_col);
            Wp[e] = reduction_weight(metric, g[e], o[e], n_row, n_col);
          }
        }
      });
    });
  }
  auto [gx, gy] = gradients_from_coefficients(G, W, x, y, nx, ny, metric);
  return {gx.to(x_in.scalar_type()), gy.to(y_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fewcore, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
  m.impl("_pairwise_distance_backward", &pairwise_distance_backward_cpu);
}

}  // namespace fewcore
