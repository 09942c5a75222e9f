// The op schemas, the argument checks and the CPU registration.
//
//   drloss_cuda::sigmoid_dr_loss_forward(logits, labels, hyperparameters...)
//       -> (losses [G], stats [G, 6])
//   drloss_cuda::sigmoid_dr_loss_backward(grad_losses [G], logits, labels, stats, hyper...)
//       -> grad_logits
//
// logits are [N, A, C] (N groups, one per image) or [M, C] (one pooled group, G = 1). The
// fake kernels and the autograd formula are registered in Python (drloss_cuda/ops.py); the
// CUDA kernels in csrc/cuda/dr_loss_cuda.cpp.
#include <Python.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "build_record.h"
#include "dr_loss.h"
#include "dr_loss_math.h"
#include "messages.h"

namespace drloss {

namespace {

// Python's name of a dtype ("torch.float32"), so that these messages read like the Python
// checks of drloss_cuda/_common.py, which say the same words.
std::string dtype_name(at::ScalarType type) {
  return "torch." + std::string(c10::getDtypeNames(type).first);
}

// The smallest softmax temperature accepted (MIN_LAMBDA in drloss_cuda/_common.py, where the
// reason is written down): an exponent scale 1/lambda above 1e4 makes the softmax a max to
// float32 precision.
constexpr double kMinLambda = 1e-4;

void check_hyperparameters(const LossOptions& o) {
  struct Positive {
    const char* name;
    double value;
    double minimum;
  };
  const Positive positive[] = {{"pos_lambda", o.pos_lambda, kMinLambda},
                               {"neg_lambda", o.neg_lambda, kMinLambda},
                               {"L", o.L, 0.0},
                               {"tau", o.tau, 0.0}};
  for (const auto& [name, value, minimum] : positive) {
    DRLOSS_CHECK_VALUE(std::isfinite(value) && value > 0, "sigmoid_dr_loss: ", name,
                       " must be a positive finite number, got ", value);
    DRLOSS_CHECK_VALUE(value >= minimum, "sigmoid_dr_loss: ", name, " must be >= ", minimum,
                       " (an exponent scale 1/", name, " above ", 1.0 / minimum,
                       " makes the softmax a max to float32 precision), got ", value);
  }
  DRLOSS_CHECK_VALUE(o.first_label >= 0, "sigmoid_dr_loss: first_label must be >= 0 (negative ",
                     "labels mean 'ignore'), got ", o.first_label);
  DRLOSS_CHECK_VALUE(std::isfinite(o.margin),
                     "sigmoid_dr_loss: margin must be a finite number, got ", o.margin);
}

// CLASS_DIMENSION_HINT of drloss_cuda/_common.py: labels shaped like logits without their
// second-to-last dimension mean logits laid out [N, C, A] or [C, M].
std::string class_dimension_hint(const at::Tensor& logits, const at::Tensor& labels) {
  std::vector<int64_t> transposed_leading(logits.sizes().begin(), logits.sizes().end());
  transposed_leading.erase(transposed_leading.end() - 2);
  if (labels.sizes() != c10::IntArrayRef(transposed_leading)) return "";
  return "; the class dimension must be the last one of logits, and these look like [N, C, A] "
         "or [C, M]: pass logits.transpose(-1, -2)";
}

}  // namespace

void poison_if_requested(at::Tensor& output) {
  const char* flag = std::getenv("DRLOSS_POISON_OUTPUTS");
  if (flag != nullptr && flag[0] == '1' && output.is_floating_point()) {
    output.fill_(std::numeric_limits<double>::quiet_NaN());
  }
}

at::ScalarType accumulate_type(at::ScalarType logits_type) {
  return logits_type == at::kDouble ? at::kDouble : at::kFloat;
}

Problem check_forward_args(const at::Tensor& logits, const at::Tensor& labels,
                           const LossOptions& options) {
  DRLOSS_CHECK(logits.dim() == 3 || logits.dim() == 2,
               "sigmoid_dr_loss: logits must have shape [N, A, C] (one group per image) or "
               "[M, C] (one pooled group), got ",
               message::piece(logits.sizes()));
  const auto type = logits.scalar_type();
  DRLOSS_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf ||
                  type == at::kBFloat16,
               "sigmoid_dr_loss: logits must be float32, float64, float16 or bfloat16, got ",
               dtype_name(type));
  DRLOSS_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
               "sigmoid_dr_loss: labels must be an integer tensor (int64 or int32), got ",
               dtype_name(labels.scalar_type()));
  const auto leading = logits.sizes().slice(0, logits.dim() - 1);
  DRLOSS_CHECK(labels.sizes() == leading, "sigmoid_dr_loss: labels must have shape ",
               message::piece(leading), " (logits' shape without the class dimension), got ",
               message::piece(labels.sizes()), class_dimension_hint(logits, labels));
  DRLOSS_CHECK(labels.device() == logits.device(),
               "sigmoid_dr_loss: labels must be on the same device as logits (", logits.device(),
               "), got ", labels.device());
  check_hyperparameters(options);
  if (logits.dim() == 3) return {logits.size(0), logits.size(1), logits.size(2)};
  return {1, logits.size(0), logits.size(1)};
}

Problem check_backward_args(const at::Tensor& grad_losses, const at::Tensor& logits,
                            const at::Tensor& labels, const at::Tensor& stats,
                            const LossOptions& options) {
  const Problem problem = check_forward_args(logits, labels, options);
  const auto acc = accumulate_type(logits.scalar_type());
  DRLOSS_CHECK(grad_losses.dim() == 1 && grad_losses.size(0) == problem.groups &&
                  grad_losses.scalar_type() == acc && grad_losses.device() == logits.device(),
               "sigmoid_dr_loss_backward: grad_losses must be a [", problem.groups, "] ",
               dtype_name(acc), " tensor on ", logits.device(), ", got ",
               message::piece(grad_losses.sizes()), " ", dtype_name(grad_losses.scalar_type()),
               " on ", grad_losses.device());
  DRLOSS_CHECK(stats.dim() == 2 && stats.size(0) == problem.groups &&
                  stats.size(1) == kNumStats && stats.scalar_type() == acc &&
                  stats.device() == logits.device(),
               "sigmoid_dr_loss_backward: stats must be the forward's [", problem.groups, ", ",
               int(kNumStats), "] ", dtype_name(acc), " tensor on ", logits.device(), ", got ",
               message::piece(stats.sizes()), " ", dtype_name(stats.scalar_type()), " on ",
               stats.device());
  return problem;
}

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
