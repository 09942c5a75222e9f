// Launchers of the CUDA kernels of the sigmoid DR loss (csrc/cuda/dr_loss_kernels.cu).
//
// Plain C++: raw device pointers, sizes, hyperparameters and a stream. No torch types, so the
// kernels compile with nvcc alone; csrc/cuda/dr_loss_cuda.cpp is the torch glue that checks
// arguments, allocates outputs and workspace through torch and calls these.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../dr_loss_options.h"

namespace drloss {
namespace cuda {

enum class LogitsType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
enum class LabelsType : int { kInt32 = 0, kInt64 = 1 };

// How the forward walks a group (DRLOSS_CUDA_FORWARD; docs/performance.md has their figures).
//  kGeneral    any layout: a head and a tail element by element, 16-byte vectors that may
//              straddle two anchors, 64-bit positions.
//  kAligned    when every 16-byte vector lies inside one anchor (C a multiple of the vector
//              width, logits on a 16-byte boundary) and a group has under 2^30 elements: one
//              label per vector, 32-bit positions, no head or tail, plain sums of 8 terms.
//  kPipelined  kAligned, with the next step's logits and labels loaded before the current
//              step's arithmetic, so that loads stay in flight while it runs.
// A call that kAligned or kPipelined cannot take (float64 logits, a temperature below 1/64,
// other shapes) runs kGeneral.
enum class ForwardWalk : int { kGeneral = 0, kAligned = 1, kPipelined = 2 };

// How both passes cut each group into blocks, and what the forward needs. Depends on the
// shape, the temperatures (which forward kernel runs), the dtypes, the walk asked for, the
// logits' alignment and the device (multiprocessor count, occupancy), never on the data: a
// given call on a given device always reduces in the same order and gives bitwise the same
// result.
struct LaunchPlan {
  int64_t blocks_per_group;   // 0 when there is no element
  int64_t per_block;          // elements per range, a multiple of 16
  int64_t grid;               // blocks launched: one wave, or fewer when there are few items
  int64_t workspace_doubles;  // the forward's workspace: one pair of partial triples per block
  ForwardWalk forward_walk;   // the walk the forward runs: the one asked for, where it applies
};

// For the current device and these logits (their address decides whether kAligned applies).
// blocks_per_group_override > 0 replaces the computed blocks per group (a debugging switch that
// the tests use to exercise other splits).
LaunchPlan plan_launch(LogitsType logits_type, const void* logits, LabelsType labels_type,
                       const Problem& shape, const LossOptions& hyper, ForwardWalk walk,
                       int64_t blocks_per_group_override);

// Forward. losses [groups] and stats [groups, 6] are in the accumulation type (double for
// float64 logits, float otherwise); workspace holds plan.workspace_doubles doubles. Every
// output element is written. Returns the error of its own launches (cudaSuccess when all
// launched).
cudaError_t launch_forward(LogitsType logits_type, const void* logits, LabelsType labels_type,
                           const void* labels, const Problem& shape, const LossOptions& hyper,
                           const LaunchPlan& plan, double* workspace, void* losses,
                           void* stats, cudaStream_t stream);

// Backward. grad_losses [groups] and stats [groups, 6] in the accumulation type; grad_logits
// has logits' shape and type and is fully written. `plan` is plan_launch's for this call.
cudaError_t launch_backward(LogitsType logits_type, const void* grad_losses, const void* logits,
                            LabelsType labels_type, const void* labels, const void* stats,
                            const Problem& shape, const LossOptions& hyper,
                            const LaunchPlan& plan, void* grad_logits, cudaStream_t stream);

}  // namespace cuda
}  // namespace drloss
