#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
namespace fewcore {
__global__ void fill_kernel(float* out, int64_t n) { int64_t i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) out[i] = 0.f; }
at::Tensor pairwise_distance_cuda(const at::Tensor& x, const at::Tensor& y, int64_t metric) {
  auto out = at::empty({x.size(0), y.size(0)}, x.options());
  fill_kernel<<<(out.numel() + 255) / 256, 256, 0, at::cuda::getCurrentCUDAStream()>>>(out.data_ptr<float>(), out.numel());
  return out;
}
TORCH_LIBRARY_IMPL(fewcore, CUDA, m) { m.impl("pairwise_distance", &pairwise_distance_cuda); }
}
