// The one place where fewcore's op schemas are declared; backends add kernels in csrc/cpu and csrc/cuda.
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
  m.def("pairwise_distance(Tensor x, Tensor y, int metric) -> Tensor");
}
