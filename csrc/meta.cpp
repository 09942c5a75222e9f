// The Meta kernels of the two ops: the checks and the outputs' shapes, no data. FakeTensor
// (torch.compile, torch.export, opcheck) runs them, over symbolic sizes where shapes are dynamic.
#include <torch/library.h>

#include "dr_loss.h"
#include "dr_loss_math.h"

namespace drloss {
namespace {

std::tuple<at::Tensor, at::Tensor> forward_meta(const at::Tensor& logits, const at::Tensor& labels,
                                                double pos_lambda, double neg_lambda, double L,
                                                double tau, double margin, int64_t first_label) {
  const c10::SymInt groups = check_forward_symbolic(
      logits, labels, {pos_lambda, neg_lambda, L, tau, margin, first_label});
  const auto options = logits.options().dtype(accumulate_type(logits.scalar_type()));
  return {at::empty_symint({groups}, options),
          at::empty_symint({groups, c10::SymInt(int64_t{kNumStats})}, options)};
}

at::Tensor backward_meta(const at::Tensor& grad_losses, const at::Tensor& logits,
                         const at::Tensor& labels, const at::Tensor& stats, double pos_lambda,
                         double neg_lambda, double L, double tau, double margin,
                         int64_t first_label) {
  check_backward_symbolic(grad_losses, logits, labels, stats,
                          {pos_lambda, neg_lambda, L, tau, margin, first_label});
  return at::empty_symint(logits.sym_sizes(), logits.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(drloss_cuda, Meta, m) {
  m.impl("sigmoid_dr_loss_forward", &forward_meta);
  m.impl("sigmoid_dr_loss_backward", &backward_meta);
}

}  // namespace drloss
