// The op schemas, the CPU registration and the build facts.
//
//   drloss_cuda::sigmoid_dr_loss_forward(logits, labels, hyperparameters...)
//       -> (losses [G], stats [G, 6])
//   drloss_cuda::sigmoid_dr_loss_backward(grad_losses [G], logits, labels, stats, hyper...)
//       -> grad_logits
//
// logits are [N, A, C] (N groups, one per image) or [M, C] (one pooled group, G = 1). The
// argument checks are in csrc/checks.cpp, the Meta kernels (which FakeTensor runs under
// torch.compile and torch.export) in csrc/meta.cpp, the autograd in csrc/autograd.cpp, the
// vmap rules in drloss_cuda/ops.py, the CUDA kernels in csrc/cuda/dr_loss_cuda.cpp.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "build_record.h"
#include "dr_loss.h"
#include "dr_loss_math.h"

namespace drloss {

namespace {

std::tuple<at::Tensor, at::Tensor> forward_cpu_op(const at::Tensor& logits,
                                                  const at::Tensor& labels, double pos_lambda,
                                                  double neg_lambda, double L, double tau,
                                                  double margin, int64_t first_label) {
  const LossOptions options{pos_lambda, neg_lambda, L, tau, margin, first_label};
  const Problem problem = check_forward_args(logits, labels, options);
  const auto acc_options = logits.options().dtype(accumulate_type(logits.scalar_type()));
  at::Tensor losses = at::empty({problem.groups}, acc_options);
  at::Tensor stats = at::empty({problem.groups, kNumStats}, acc_options);
  poison_if_requested(losses);
  poison_if_requested(stats);
  forward_cpu(logits.contiguous(), labels.contiguous(), problem, options, losses, stats);
  return {losses, stats};
}

at::Tensor backward_cpu_op(const at::Tensor& grad_losses, const at::Tensor& logits,
                           const at::Tensor& labels, const at::Tensor& stats, double pos_lambda,
                           double neg_lambda, double L, double tau, double margin,
                           int64_t first_label) {
  const LossOptions options{pos_lambda, neg_lambda, L, tau, margin, first_label};
  const Problem problem = check_backward_args(grad_losses, logits, labels, stats, options);
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options());
  poison_if_requested(grad_logits);
  backward_cpu(grad_losses.contiguous(), logits.contiguous(), labels.contiguous(),
               stats.contiguous(), problem, options, grad_logits);
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY(drloss_cuda, m) {
  m.def(
      "sigmoid_dr_loss_forward(Tensor logits, Tensor labels, float pos_lambda, "
      "float neg_lambda, float L, float tau, float margin, int first_label) -> (Tensor, Tensor)");
  m.def(
      "sigmoid_dr_loss_backward(Tensor grad_losses, Tensor logits, Tensor labels, Tensor stats, "
      "float pos_lambda, float neg_lambda, float L, float tau, float margin, int first_label) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(drloss_cuda, CPU, m) {
  m.impl("sigmoid_dr_loss_forward", &forward_cpu_op);
  m.impl("sigmoid_dr_loss_backward", &backward_cpu_op);
}

}  // namespace drloss

// Build facts the tests and benchmarks report (plain C API: no pybind11 needed).
namespace {

PyObject* build_info(PyObject*, PyObject*) {
#if defined(_OPENMP)
  const int openmp = 1;
#else
  const int openmp = 0;
#endif
#if defined(DRLOSS_WITH_CUDA)
  const int cuda = 1;
#else
  const int cuda = 0;
#endif
  const std::string record = drloss::build_record();
  return Py_BuildValue("{s:O,s:O,s:s}", "openmp", openmp ? Py_True : Py_False, "cuda",
                       cuda ? Py_True : Py_False, "record", record.c_str());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "Whether this build has OpenMP (parallel CPU kernels) and the CUDA kernels, and the "
     "build record (JSON: the torch it was built against, CUDA architectures, why no CUDA)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

// Importing drloss_cuda._C runs the static TORCH_LIBRARY registrations above.
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
