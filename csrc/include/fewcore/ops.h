// Declarations shared by fewcore's op registrations (csrc/fewcore.cpp) and kernels.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <initializer_list>
#include <utility>

namespace fewcore {

// Held by every kernel entry point, forward and backward: their own ATen products (bmm, baddbmm)
// run in the compute dtype even when the op is called, or its backward runs, under autocast,
// which would otherwise lower them to float16/bfloat16 (and overflow large coefficients).
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// Checks of the arguments every kernel receives: 3-D, one batch size, matching widths, same
// floating dtype and device, a known metric. The Python wrappers check first with friendlier
// messages; these keep a direct torch.ops.fewcore call from crashing.
void check_pairwise_args(const at::Tensor& x, const at::Tensor& y, int64_t metric);
void check_attention_args(const at::Tensor& q, const at::Tensor& s, const at::Tensor& v, int64_t metric,
                          double temperature);

// The backward ops' other tensor arguments (gradient, saved outputs) must be on the device of
// `first`: a CPU gradient handed to a CUDA kernel would be read through a host pointer.
void check_backward_args(const char* op, const char* first_name, const at::Tensor& first,
                         std::initializer_list<std::pair<const char*, const at::Tensor*>> others);

// Per-row norms a metric needs ([B, R]): ‖x‖² for distances, max(‖x‖, eps) for cosine, an
// empty tensor for dot. Computed in x's dtype.
at::Tensor metric_norms(const at::Tensor& x, int64_t metric);

// The dtype the kernels compute in: float32 for float16/bfloat16 inputs, else the input's.
at::ScalarType compute_dtype(const at::Tensor& t);

// Cosine is unchanged by scaling a row, but ‖x‖² and x·y overflow float32 for rows of magnitude
// ≳ 1e19. Returns x with each row whose largest finite magnitude exceeds 2^40 divided by a power of
// two (exact), and sets `divisors` to those powers ([B, R, 1], 1 for the other rows). On the CPU
// `divisors` stays undefined, and x is returned as it is, when no row needs it; on CUDA the check
// would cost a synchronization, so every row is divided (by 1 when in range).
at::Tensor cosine_in_range(const at::Tensor& x, at::Tensor& divisors);

// The gradient of a row divided by cosine_in_range: its scaled row's gradient divided by the same
// power of two. `grad` as it is when `divisors` is undefined.
at::Tensor cosine_gradient_of_unscaled(const at::Tensor& grad, const at::Tensor& divisors);

// An op argument as the kernels read it: detached (their own ATen calls, such as bmm_out, must
// not record autograd when the op is called on inputs that require grad), in `dtype`, contiguous.
at::Tensor kernel_input(const at::Tensor& t, at::ScalarType dtype);

}  // namespace fewcore
