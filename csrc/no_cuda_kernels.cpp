// Built only when the CUDA kernels are not: kernels registered for CUDA tensors that say why
// this build has none and how to get them, instead of the dispatcher's list of backends. They
// cost the other devices nothing: the dispatcher calls them for CUDA tensors alone.
#include <torch/library.h>

#include <cstdlib>

#include "build_record.h"
#include "dr_loss.h"
#include "messages.h"

namespace drloss {
namespace {

[[noreturn]] void no_cuda_kernels() {
  const std::string reason = cuda_absent_reason();
  DRLOSS_CHECK(false, "sigmoid_dr_loss: logits are on a CUDA device, but this build of "
               "drloss_cuda has no CUDA kernels",
               reason.empty() ? std::string() : " (" + reason + ")",
               ". Rebuild it with a CUDA torch and its CUDA toolkit, e.g. `CUDA_HOME=/usr/local/cuda "
               "TORCH_CUDA_ARCH_LIST=\"8.0;9.0\" FORCE_CUDA=1 pip install --no-build-isolation -e .`; "
               "`python -m drloss_cuda` prints what this build contains");
  std::abort();  // not reached: DRLOSS_CHECK(false, ...) throws
}

// The arguments are checked first: a CUDA tensor among CPU ones reaches these kernels too, and
// is a device mismatch, not a CUDA call.
std::tuple<at::Tensor, at::Tensor> forward_without_cuda(const at::Tensor& logits,
                                                        const at::Tensor& labels,
                                                        double pos_lambda, double neg_lambda,
                                                        double L, double tau, double margin,
                                                        int64_t first_label) {
  check_forward_args(logits, labels, {pos_lambda, neg_lambda, L, tau, margin, first_label});
  no_cuda_kernels();
}

at::Tensor backward_without_cuda(const at::Tensor& grad_losses, const at::Tensor& logits,
                                 const at::Tensor& labels, const at::Tensor& stats,
                                 double pos_lambda, double neg_lambda, double L, double tau,
                                 double margin, int64_t first_label) {
  check_backward_args(grad_losses, logits, labels, stats,
                      {pos_lambda, neg_lambda, L, tau, margin, first_label});
  no_cuda_kernels();
}

}  // namespace

TORCH_LIBRARY_IMPL(drloss_cuda, CUDA, m) {
  m.impl("sigmoid_dr_loss_forward", &forward_without_cuda);
  m.impl("sigmoid_dr_loss_backward", &backward_without_cuda);
}

}  // namespace drloss
