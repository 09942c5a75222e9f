// The torch-facing C++ interface: argument checks shared by every device, and the per-device
// implementations that csrc/ops.cpp (CPU) and csrc/cuda/dr_loss_cuda.cpp (CUDA) register.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "dr_loss_options.h"

namespace drloss {

// Validates the forward's arguments over symbolic sizes (real, meta and fake tensors alike);
// every message names the offending argument. Returns the number of groups.
c10::SymInt check_forward_symbolic(const at::Tensor& logits, const at::Tensor& labels,
                                   const LossOptions& options);

// The backward's checks: the forward's, then grad_losses and stats against them, so that a
// direct call of the backward op cannot read out of bounds. Returns the number of groups.
c10::SymInt check_backward_symbolic(const at::Tensor& grad_losses, const at::Tensor& logits,
                                    const at::Tensor& labels, const at::Tensor& stats,
                                    const LossOptions& options);

// The same checks for tensors with data, returning their (concrete) problem.
Problem check_forward_args(const at::Tensor& logits, const at::Tensor& labels,
                           const LossOptions& options);

Problem check_backward_args(const at::Tensor& grad_losses, const at::Tensor& logits,
                            const at::Tensor& labels, const at::Tensor& stats,
                            const LossOptions& options);

// With the environment variable DRLOSS_POISON_OUTPUTS=1, fills a freshly allocated output
// with NaN before the kernel runs, so that the tests see any element a kernel fails to write.
void poison_if_requested(at::Tensor& output);

// float64 logits accumulate in float64, every other floating type in float32.
at::ScalarType accumulate_type(at::ScalarType logits_type);

// The CPU kernels (csrc/cpu/dr_loss_cpu.cpp). Inputs are checked and contiguous.
// forward: writes losses [groups] and stats [groups, kNumStats] (accumulation type).
void forward_cpu(const at::Tensor& logits, const at::Tensor& labels, const Problem& problem,
                 const LossOptions& options, at::Tensor& losses, at::Tensor& stats);
// backward: writes grad_logits (logits' shape and type).
void backward_cpu(const at::Tensor& grad_losses, const at::Tensor& logits,
                  const at::Tensor& labels, const at::Tensor& stats, const Problem& problem,
                  const LossOptions& options, at::Tensor& grad_logits);

}  // namespace drloss
