// The CUDA implementations of the two ops: argument checks (shared with the CPU), contiguous
// inputs, device guard, current stream, outputs and workspace from torch's caching allocator
// (so CUDA graphs capture them), dtype dispatch to the launchers of dr_loss_kernels.cu. No
// host synchronization anywhere.
//
// Only c10/cuda and the CUDA runtime: ATen/cuda/CUDAContext.h would also need the cuBLAS and
// cuSPARSE headers, which a toolkit with just the compiler and runtime does not have.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>

#include "../dr_loss.h"
#include "../dr_loss_math.h"
#include "../messages.h"
#include "dr_loss_kernels.h"

namespace drloss {
namespace {

cuda::LogitsType logits_type_of(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat:
      return cuda::LogitsType::kFloat32;
    case at::kDouble:
      return cuda::LogitsType::kFloat64;
    case at::kHalf:
      return cuda::LogitsType::kFloat16;
    case at::kBFloat16:
      return cuda::LogitsType::kBFloat16;
    default:
      DRLOSS_CHECK(false, "sigmoid_dr_loss: unsupported logits dtype ",
                   c10::toString(logits.scalar_type()));
  }
}

cuda::LabelsType labels_type_of(const at::Tensor& labels) {
  return labels.scalar_type() == at::kInt ? cuda::LabelsType::kInt32 : cuda::LabelsType::kInt64;
}

void check_on_cuda(const at::Tensor& t, const char* name) {
  DRLOSS_CHECK(t.is_cuda(), "sigmoid_dr_loss: ", name, " must be a CUDA tensor, got ", t.device());
}

// DRLOSS_CUDA_BLOCKS_PER_GROUP=k (a debugging switch, read at every call) replaces the blocks
// per group that the launcher would choose, so that tests can exercise other splits.
int64_t blocks_per_group_override() {
  const char* value = std::getenv("DRLOSS_CUDA_BLOCKS_PER_GROUP");
  if (value == nullptr || value[0] == '\0') return 0;
  char* end = nullptr;
  const long long blocks = std::strtoll(value, &end, 10);
  DRLOSS_CHECK(end != value && *end == '\0' && blocks > 0,
               "DRLOSS_CUDA_BLOCKS_PER_GROUP must be a positive integer, got '", value, "'");
  return blocks;
}

// DRLOSS_CUDA_FORWARD=general|aligned|pipelined (a measurement switch, read at every call)
// chooses the forward's walk (cuda::ForwardWalk); unset or empty, the general walk.
cuda::ForwardWalk forward_walk_requested() {
  const char* value = std::getenv("DRLOSS_CUDA_FORWARD");
  if (value == nullptr || value[0] == '\0') return cuda::ForwardWalk::kGeneral;
  if (std::strcmp(value, "general") == 0) return cuda::ForwardWalk::kGeneral;
  if (std::strcmp(value, "aligned") == 0) return cuda::ForwardWalk::kAligned;
  if (std::strcmp(value, "pipelined") == 0) return cuda::ForwardWalk::kPipelined;
  DRLOSS_CHECK(false, "DRLOSS_CUDA_FORWARD must be general, aligned or pipelined, got '", value,
               "'");
}

// The error of a call's own launches. A GPU whose architecture the build lacks finds no kernel
// image: say so and how to rebuild, where CUDA alone would not name the cause.
void check_launches(cudaError_t error) {
  if (error == cudaErrorNoKernelImageForDevice || error == cudaErrorInvalidDeviceFunction) {
    int device = 0;
    int major = 0;
    int minor = 0;
    (void)cudaGetDevice(&device);
    (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    (void)cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    (void)cudaGetLastError();  // the launch's own error, reported here
    const std::string capability = std::to_string(major) + "." + std::to_string(minor);
    DRLOSS_CHECK(false, "sigmoid_dr_loss: this build of drloss_cuda has no CUDA kernels for this GPU ",
                 "(cuda:", device, ", compute capability ", capability,
                 "): rebuild it with TORCH_CUDA_ARCH_LIST=\"", capability,
                 "\" pip install --no-build-isolation -e . (python -m drloss_cuda lists the "
                 "architectures it was built for)");
  }
  C10_CUDA_CHECK(error);
}

// The launch plan of a call. The backward asks for the general walk: its grid is then one wave
// of the general forward's occupancy whichever walk the forward took.
cuda::LaunchPlan plan_call(const at::Tensor& logits, const at::Tensor& labels,
                           const Problem& problem, const LossOptions& options,
                           cuda::ForwardWalk walk) {
  // The kernels keep a class index in 32 bits, and add up to 2048 to it before wrapping.
  DRLOSS_CHECK(problem.classes <= (int64_t(1) << 30),
               "sigmoid_dr_loss: on CUDA the number of classes must be at most 2^30, got ",
               problem.classes);
  return cuda::plan_launch(logits_type_of(logits), logits.const_data_ptr(), labels_type_of(labels),
                           problem, options, walk, blocks_per_group_override());
}

std::tuple<at::Tensor, at::Tensor> forward_cuda_op(const at::Tensor& logits_in,
                                                   const at::Tensor& labels_in,
                                                   double pos_lambda, double neg_lambda,
                                                   double L, double tau, double margin,
                                                   int64_t first_label) {
  const LossOptions options{pos_lambda, neg_lambda, L, tau, margin, first_label};
  const Problem problem = check_forward_args(logits_in, labels_in, options);
  check_on_cuda(logits_in, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const auto acc_options = logits.options().dtype(accumulate_type(logits.scalar_type()));
  at::Tensor losses = at::empty({problem.groups}, acc_options);
  at::Tensor stats = at::empty({problem.groups, kNumStats}, acc_options);
  poison_if_requested(losses);
  poison_if_requested(stats);
  // Planned before the early return, so that a bad switch is refused at every call.
  const cuda::LaunchPlan plan =
      plan_call(logits, labels, problem, options, forward_walk_requested());
  if (problem.groups == 0) return {losses, stats};

  at::Tensor workspace = at::empty({plan.workspace_doubles}, logits.options().dtype(at::kDouble));
  // A work item whose partials went unwritten then makes its group's loss NaN, instead of
  // merging what an earlier call left in the reused memory.
  poison_if_requested(workspace);
  // The error of these launches alone (an earlier, unrelated one is not blamed on this op).
  check_launches(cuda::launch_forward(
      logits_type_of(logits), logits.const_data_ptr(), labels_type_of(labels),
      labels.const_data_ptr(), problem, options, plan,
      plan.workspace_doubles > 0 ? workspace.mutable_data_ptr<double>() : nullptr,
      losses.mutable_data_ptr(), stats.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream().stream()));
  return {losses, stats};
}

at::Tensor backward_cuda_op(const at::Tensor& grad_losses_in, const at::Tensor& logits_in,
                            const at::Tensor& labels_in, const at::Tensor& stats_in,
                            double pos_lambda, double neg_lambda, double L, double tau,
                            double margin, int64_t first_label) {
  const LossOptions options{pos_lambda, neg_lambda, L, tau, margin, first_label};
  const Problem problem =
      check_backward_args(grad_losses_in, logits_in, labels_in, stats_in, options);
  check_on_cuda(logits_in, "logits");
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor grad_losses = grad_losses_in.contiguous();
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  const at::Tensor stats = stats_in.contiguous();
  at::Tensor grad_logits = at::empty(logits.sizes(), logits.options());
  poison_if_requested(grad_logits);
  const cuda::LaunchPlan plan =
      plan_call(logits, labels, problem, options, cuda::ForwardWalk::kGeneral);
  if (grad_logits.numel() == 0) return grad_logits;

  check_launches(cuda::launch_backward(
      logits_type_of(logits), grad_losses.const_data_ptr(), logits.const_data_ptr(),
      labels_type_of(labels), labels.const_data_ptr(), stats.const_data_ptr(), problem,
      options, plan, grad_logits.mutable_data_ptr(),
      c10::cuda::getCurrentCUDAStream().stream()));
  return grad_logits;
}

}  // namespace

TORCH_LIBRARY_IMPL(drloss_cuda, CUDA, m) {
  m.impl("sigmoid_dr_loss_forward", &forward_cuda_op);
  m.impl("sigmoid_dr_loss_backward", &backward_cuda_op);
}

}  // namespace drloss
