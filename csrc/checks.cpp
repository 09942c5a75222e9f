// The argument checks of the two ops, one copy for every device: the CPU and CUDA kernels and
// the Meta kernels (which FakeTensor runs under torch.compile and torch.export) call them.
// Shapes are read as symbolic sizes, so that a traced call keeps its dynamic dimensions (a
// comparison of two symbolic sizes becomes a guard, not a specialization to numbers).
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

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
std::string class_dimension_hint(c10::SymIntArrayRef logits, c10::SymIntArrayRef labels) {
  std::vector<c10::SymInt> transposed_leading(logits.begin(), logits.end());
  transposed_leading.erase(transposed_leading.end() - 2);
  if (labels != c10::SymIntArrayRef(transposed_leading)) return "";
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

c10::SymInt check_forward_symbolic(const at::Tensor& logits, const at::Tensor& labels,
                                   const LossOptions& options) {
  const auto sizes = logits.sym_sizes();
  DRLOSS_CHECK(sizes.size() == 3 || sizes.size() == 2,
               "sigmoid_dr_loss: logits must have shape [N, A, C] (one group per image) or "
               "[M, C] (one pooled group), got ",
               message::piece(sizes));
  const auto type = logits.scalar_type();
  DRLOSS_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf ||
                  type == at::kBFloat16,
               "sigmoid_dr_loss: logits must be float32, float64, float16 or bfloat16, got ",
               dtype_name(type));
  DRLOSS_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
               "sigmoid_dr_loss: labels must be an integer tensor (int64 or int32), got ",
               dtype_name(labels.scalar_type()));
  const auto leading = sizes.slice(0, sizes.size() - 1);
  DRLOSS_CHECK(labels.sym_sizes() == leading, "sigmoid_dr_loss: labels must have shape ",
               message::piece(leading), " (logits' shape without the class dimension), got ",
               message::piece(labels.sym_sizes()), class_dimension_hint(sizes, labels.sym_sizes()));
  DRLOSS_CHECK(labels.device() == logits.device(),
               "sigmoid_dr_loss: labels must be on the same device as logits (", logits.device(),
               "), got ", labels.device());
  check_hyperparameters(options);
  return sizes.size() == 3 ? sizes[0] : c10::SymInt(1);
}

c10::SymInt check_backward_symbolic(const at::Tensor& grad_losses, const at::Tensor& logits,
                                    const at::Tensor& labels, const at::Tensor& stats,
                                    const LossOptions& options) {
  const c10::SymInt groups = check_forward_symbolic(logits, labels, options);
  const auto acc = accumulate_type(logits.scalar_type());
  DRLOSS_CHECK(grad_losses.dim() == 1 && grad_losses.sym_size(0) == groups &&
                   grad_losses.scalar_type() == acc && grad_losses.device() == logits.device(),
               "sigmoid_dr_loss_backward: grad_losses must be a [", groups, "] ",
               dtype_name(acc), " tensor on ", logits.device(), ", got ",
               message::piece(grad_losses.sym_sizes()), " ",
               dtype_name(grad_losses.scalar_type()), " on ", grad_losses.device());
  DRLOSS_CHECK(stats.dim() == 2 && stats.sym_size(0) == groups && stats.sym_size(1) == kNumStats &&
                   stats.scalar_type() == acc && stats.device() == logits.device(),
               "sigmoid_dr_loss_backward: stats must be the forward's [", groups, ", ",
               int(kNumStats), "] ", dtype_name(acc), " tensor on ", logits.device(), ", got ",
               message::piece(stats.sym_sizes()), " ", dtype_name(stats.scalar_type()), " on ",
               stats.device());
  return groups;
}

namespace {

Problem problem_of(const at::Tensor& logits) {
  if (logits.dim() == 3) return {logits.size(0), logits.size(1), logits.size(2)};
  return {1, logits.size(0), logits.size(1)};
}

}  // namespace

Problem check_forward_args(const at::Tensor& logits, const at::Tensor& labels,
                           const LossOptions& options) {
  check_forward_symbolic(logits, labels, options);
  return problem_of(logits);
}

Problem check_backward_args(const at::Tensor& grad_losses, const at::Tensor& logits,
                            const at::Tensor& labels, const at::Tensor& stats,
                            const LossOptions& options) {
  check_backward_symbolic(grad_losses, logits, labels, stats, options);
  return problem_of(logits);
}

}  // namespace drloss
