// The one place where fewcore's op schemas are declared; backends add kernels in csrc/cpu and
// csrc/cuda. Ops whose name starts with `_` are internal (backward passes, autograd entry points).
#include <Python.h>
#include <torch/library.h>

extern "C" {
// `import fewcore._C` only has to load this library so the registrations below run.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fewcore, m) {
  // x [B,N,D], y [B,M,D] -> [B,N,M]; metric: 0 sqeuclidean, 1 euclidean, 2 cosine, 3 dot.
  m.def("pairwise_distance(Tensor x, Tensor y, int metric) -> Tensor");
  // grad [B,N,M], out = pairwise_distance(x, y) -> (grad_x, grad_y).
  m.def("_pairwise_distance_backward(Tensor grad, Tensor x, Tensor y, Tensor out, int metric) -> (Tensor, Tensor)");
  // q [B,N,D], s [B,M,D], v [B,M,C] -> (out [B,N,C], lse [B,N]: log-sum-exp of each query's scores
  // in float64 whatever the inputs (math.h: log_sum_exp),
  // values: the metric's [B,N,M] values when save_values, else an empty [B,0,0]). Saving them
  // spares the backward a product as large as the forward's; for tasks whose scores fit in cache
  // (CPU only: the CUDA kernels always recompute).
  m.def(
      "episode_attention(Tensor q, Tensor s, Tensor v, int metric, float temperature, bool save_values=False) "
      "-> (Tensor, Tensor, Tensor)");
  // values: the forward's third output; the backward recomputes the scores from the inputs and
  // lse where it is empty -> (grad_q, grad_s, grad_v).
  m.def(
      "_episode_attention_backward(Tensor grad_out, Tensor q, Tensor s, Tensor v, Tensor out, Tensor lse, "
      "Tensor values, int metric, float temperature) -> (Tensor, Tensor, Tensor)");

  // Entry points with C++ autograd (csrc/autograd.cpp) for plain eager calls: the forward ops
  // above, recorded for backward without a Python autograd.Function.
  m.def("_pairwise_distance_autograd(Tensor x, Tensor y, int metric) -> Tensor");
  m.def(
      "_episode_attention_autograd(Tensor q, Tensor s, Tensor v, int metric, float temperature, "
      "bool save_values=False) -> (Tensor, Tensor, Tensor)");
  // The backward ops with a differentiable implementation, which the C++ backward calls when it
  // runs with create_graph; implemented in Python (fewcore/ops/_compiled.py).
  m.def(
      "_pairwise_distance_backward_create_graph(Tensor grad, Tensor x, Tensor y, Tensor out, int metric) "
      "-> (Tensor, Tensor)");
  m.def(
      "_episode_attention_backward_create_graph(Tensor grad_out, Tensor q, Tensor s, Tensor v, Tensor out, "
      "Tensor lse, Tensor values, int metric, float temperature) -> (Tensor, Tensor, Tensor)");
}
