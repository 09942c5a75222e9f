// The plain description of one call: shapes and hyperparameters. No torch types, so both the
// torch-facing code (csrc/dr_loss.h) and the CUDA launchers (csrc/cuda/dr_loss_kernels.h) use it.
#pragma once

#include <cstdint>

namespace drloss {

// The hyperparameters exactly as the op schema passes them.
struct LossOptions {
  double pos_lambda;
  double neg_lambda;
  double L;
  double tau;
  double margin;
  int64_t first_label;
};

// Shapes of one call, after the checks: logits viewed as [groups, anchors, classes], contiguous,
// labels as [groups, anchors].
struct Problem {
  int64_t groups;
  int64_t anchors;
  int64_t classes;
};

}  // namespace drloss
