// Declarations shared by fewcore's op registrations (csrc/fewcore.cpp) and kernels.
#pragma once

#include <ATen/ATen.h>

namespace fewcore {

// Checks of the arguments every kernel receives: 3-D, one batch size, matching widths, same
// floating dtype and device, a known metric. The Python wrappers check first with friendlier
// messages; these keep a direct torch.ops.fewcore call from crashing.
void check_pairwise_args(const at::Tensor& x, const at::Tensor& y, int64_t metric);
void check_attention_args(const at::Tensor& q, const at::Tensor& s, const at::Tensor& v, int64_t metric,
                          double temperature);

// Per-row norms a metric needs ([B, R]): ‖x‖² for distances, max(‖x‖, eps) for cosine, an
// empty tensor for dot. Computed in x's dtype.
at::Tensor metric_norms(const at::Tensor& x, int64_t metric);

// The dtype the kernels compute in: float32 for float16/bfloat16 inputs, else the input's.
at::ScalarType compute_dtype(const at::Tensor& t);

// An op argument as the kernels read it: detached (their own ATen calls, such as bmm_out, must
// not record autograd when the op is called on inputs that require grad), in `dtype`, contiguous.
at::Tensor kernel_input(const at::Tensor& t, at::ScalarType dtype);

}  // namespace fewcore
