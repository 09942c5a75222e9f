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

// How the forward cuts each group into blocks. Depends on the shape and the device's
// multiprocessor count only (never on the data), so a given call on a given device always
// reduces in the same order and gives bitwise the same result.
int64_t forward_blocks_per_group(const Problem& shape, int multiprocessor_count);

// Number of accumulation-type elements (float, or double for float64 logits) of the forward's
// workspace (one pair of softmax partials per block). 0 when nothing needs one.
int64_t forward_workspace_elements(const Problem& shape, int multiprocessor_count);

// Forward. losses [groups] and stats [groups, 6] are in the accumulation type (double for
// float64 logits, float otherwise); workspace holds forward_workspace_elements() of that type.
// Every output element is written. Returns the launch error (cudaSuccess when all launched).
cudaError_t launch_forward(LogitsType logits_type, const void* logits, LabelsType labels_type,
                           const void* labels, const Problem& shape, const LossOptions& hyper,
                           int multiprocessor_count, void* workspace, void* losses, void* stats,
                           cudaStream_t stream);

// Backward. grad_losses [groups] and stats [groups, 6] in the accumulation type; grad_logits
// has logits' shape and type and is fully written.
cudaError_t launch_backward(LogitsType logits_type, const void* grad_losses, const void* logits,
                            LabelsType labels_type, const void* labels, const void* stats,
                            const Problem& shape, const LossOptions& hyper,
                            int multiprocessor_count, void* grad_logits, cudaStream_t stream);

}  // namespace cuda
}  // namespace drloss
