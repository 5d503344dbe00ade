// Autograd for plain eager calls, in C++. A forward+backward through the Python
// torch.autograd.Functions of fewcore/ops/_compiled.py costs ~40 µs more than the kernels at an
// episode shape (two Python Function levels, each calling back into Python from the autograd
// engine), as much as the kernels themselves take there. These C++ Functions do the same work
// without Python. torch.func rejects C++ autograd Functions, so the Python ones stay for
// transforms and torch.compile; the Python wrapper picks these only outside both.
//
// Double backward: when the backward runs with create_graph, it calls the `*_create_graph` ops,
// which fewcore/ops/_compiled.py implements with its differentiable Python backward Functions.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace fewcore {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A fewcore op's dispatcher handle; each call site keeps its own in a function-local static.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The forward ops. Also the autograd entry points' kernels below autograd (inference mode, or
// a caller that already dispatched past autograd), where there is nothing to record.
at::Tensor pairwise_distance_kernel(const at::Tensor& x, const at::Tensor& y, int64_t metric) {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("fewcore::pairwise_distance");
  return op.call(x, y, metric);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> episode_attention_kernel(const at::Tensor& q, const at::Tensor& s,
                                                                        const at::Tensor& v, int64_t metric,
                                                                        double temperature, bool save_values) {
  static const auto op = find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double, bool)>("fewcore::episode_attention");
  return op.call(q, s, v, metric, temperature, save_values);
}

using PairwiseBackward = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           const at::Tensor&, int64_t);
using AttentionBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, int64_t, double);

class PairwiseDistanceFunction : public torch::autograd::Function<PairwiseDistanceFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& y, int64_t metric) {
    at::Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      out = pairwise_distance_kernel(x, y, metric);
    }
    ctx->save_for_backward({x, y, out});
    ctx->saved_data["metric"] = metric;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t metric = ctx->saved_data["metric"].toInt();
    at::Tensor grad_x, grad_y;
    if (at::GradMode::is_enabled()) {  // create_graph
      static const auto differentiable = find_op<PairwiseBackward>("fewcore::_pairwise_distance_backward_create_graph");
      std::tie(grad_x, grad_y) = differentiable.call(grads[0], saved[0], saved[1], saved[2], metric);
    } else {
      static const auto kernel = find_op<PairwiseBackward>("fewcore::_pairwise_distance_backward");
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(grad_x, grad_y) = kernel.call(grads[0], saved[0], saved[1], saved[2], metric);
    }
    return {grad_x, grad_y, at::Tensor()};
  }
};

class EpisodeAttentionFunction : public torch::autograd::Function<EpisodeAttentionFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& s, const at::Tensor& v,
                               int64_t metric, double temperature, bool save_values) {
    at::Tensor out, lse, values;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(out, lse, values) = episode_attention_kernel(q, s, v, metric, temperature, save_values);
    }
    ctx->save_for_backward({q, s, v, out, lse, values});
    ctx->saved_data["metric"] = metric;
    ctx->saved_data["temperature"] = temperature;
    ctx->mark_non_differentiable({lse, values});
    // No zero-filled gradients for lse and values: the backward ignores them, and filling a
    // [B, N, M] tensor with zeros costs as much as the softmax.
    ctx->set_materialize_grads(false);
    return {out, lse, values};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) {  // out's gradient is undefined too: none flows back
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const auto saved = ctx->get_saved_variables();
    const int64_t metric = ctx->saved_data["metric"].toInt();
    const double temperature = ctx->saved_data["temperature"].toDouble();
    at::Tensor grad_q, grad_s, grad_v;
    if (at::GradMode::is_enabled()) {  // create_graph
      static const auto differentiable =
          find_op<AttentionBackward>("fewcore::_episode_attention_backward_create_graph");
      std::tie(grad_q, grad_s, grad_v) =
          differentiable.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], metric, temperature);
    } else {
      static const auto kernel = find_op<AttentionBackward>("fewcore::_episode_attention_backward");
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      std::tie(grad_q, grad_s, grad_v) =
          kernel.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], metric, temperature);
    }
    return {grad_q, grad_s, grad_v, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor pairwise_distance_autograd(const at::Tensor& x, const at::Tensor& y, int64_t metric) {
  return PairwiseDistanceFunction::apply(x, y, metric);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> episode_attention_autograd(const at::Tensor& q, const at::Tensor& s,
                                                                          const at::Tensor& v, int64_t metric,
                                                                          double temperature, bool save_values) {
  auto outputs = EpisodeAttentionFunction::apply(q, s, v, metric, temperature, save_values);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fewcore, Autograd, m) {
  m.impl("_pairwise_distance_autograd", &pairwise_distance_autograd);
  m.impl("_episode_attention_autograd", &episode_attention_autograd);
}

TORCH_LIBRARY_IMPL(fewcore, CompositeExplicitAutograd, m) {
  m.impl("_pairwise_distance_autograd", &pairwise_distance_kernel);
  m.impl("_episode_attention_autograd", &episode_attention_kernel);
}

}  // namespace fewcore
