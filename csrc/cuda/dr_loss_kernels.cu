// CUDA forward and backward of the sigmoid DR loss: the launchers. The kernels are in
// kernel_common.cuh (what both passes share), forward_kernels.cuh and backward_kernel.cuh.
//
// The per-element math and every numerical policy (shifts, summation) come from
// ../dr_loss_math.h, the header the CPU kernels use too. These files include no torch header:
// plain nvcc compiles them (.ci/check_cuda_compile.sh).
//
// Work split (both passes). Each group's A*C elements are cut into `blocks_per_group`
// contiguous ranges of `per_block` elements (a multiple of 16, so that ranges keep the group's
// alignment). A work item is (group, range); blocks loop over the items (item = blockIdx.x,
// blockIdx.x + gridDim.x, ...), so any number of groups fits in one launch. The grid is one
// wave: the multiprocessor count times the blocks per multiprocessor the occupancy calculator
// gives for the kernel.
//
// Inside a range the threads walk 16-byte vectors of the tensor they must access aligned (the
// logits in the forward, the gradient in the backward), two vectors per step so that two loads
// are in flight. The few elements before the first aligned vector (head) and after the last
// (tail) are taken one by one. When the logits sit at another offset from a 16-byte boundary
// than the gradient (a view with a storage offset), the backward still stores 16-byte vectors
// and loads the logits element by element.
//
// Labels are read once per anchor segment of a vector: a vector of N elements covers one or a
// few anchors, and two bit masks (counted, positive) classify its elements. The (anchor, class)
// position advances incrementally: one 64-bit division per thread and range.
//
// Forward: with both shifts fixed (policy 1, every temperature >= 1/64) an element costs one
// sigmoid, one exp2 and two selected adds into a plain per-vector sum, which then goes into the
// thread's compensated sums (policy 2); positives (at most one per anchor) take a branch that is
// rarely taken. Otherwise each element is added to a running-max accumulator. Threads merge in
// double, warp then block, in a fixed tree order; a second kernel merges each group's partials
// in a fixed order and writes the loss and the saved statistics. No atomics: the result is
// bitwise the same from run to run on a given device.
//
// The forward's anchor-aligned walks (forward_aligned_kernel; ForwardWalk in dr_loss_kernels.h)
// do the same arithmetic where every vector lies inside one anchor, with one label per vector
// and 32-bit positions, and in their pipelined form with the next step's loads in flight.
//
// Backward: the same walk; each element recomputes p and its gradient from its group's saved
// statistics and is written in logits' dtype.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>

#include "../dr_loss_math.h"
#include "backward_kernel.cuh"
#include "dr_loss_kernels.h"
#include "forward_kernels.cuh"
#include "kernel_common.cuh"

namespace drloss {
namespace cuda {
namespace {

constexpr int64_t kMinElementsPerBlock = int64_t(kThreads) * 16;
constexpr int64_t kRangeAlign = 16;            // elements; a multiple of every vector width
constexpr int64_t kMaxGrid = 0x7fffffff;
constexpr int64_t kMaxFinalizeGrid = 65535;    // the kernel loops over the rest

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Host side.

template <typename F>
cudaError_t dispatch(LogitsType logits_type, LabelsType labels_type, F&& f) {
  auto with_label = [&](auto scalar_tag) -> cudaError_t {
    using scalar_t = decltype(scalar_tag);
    if (labels_type == LabelsType::kInt32) return f(scalar_t(), int32_t());
    if (labels_type == LabelsType::kInt64) return f(scalar_t(), int64_t());
    return cudaErrorInvalidValue;
  };
  switch (logits_type) {
    case LogitsType::kFloat32:
      return with_label(float());
    case LogitsType::kFloat64:
      return with_label(double());
    case LogitsType::kFloat16:
      return with_label(__half());
    case LogitsType::kBFloat16:
      return with_label(__nv_bfloat16());
  }
  return cudaErrorInvalidValue;
}

// Launches `kernel` and returns the error of this launch alone (cudaLaunchKernelEx reports the
// launch's own error; cudaGetLastError could report an earlier, unrelated one).
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), unsigned grid, unsigned block, cudaStream_t stream,
                   Args... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(grid);
  config.blockDim = dim3(block);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  config.attrs = nullptr;
  config.numAttrs = 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// The widest power of two (up to 16 bytes) by which the two addresses' offsets agree.
int shared_alignment(const void* x, const void* out) {
  const uintptr_t difference = reinterpret_cast<uintptr_t>(x) - reinterpret_cast<uintptr_t>(out);
  for (int piece = 16; piece > 1; piece /= 2) {
    if (difference % piece == 0) return piece;
  }
  return 1;
}

// Vector width of the walk: 16-byte vectors when every vector meets at most two anchors
// (classes >= N), element by element otherwise.
template <typename scalar_t>
int walk_width(int64_t classes) {
  return classes >= vec_width<scalar_t>() ? vec_width<scalar_t>() : 1;
}

template <typename scalar_t, typename label_t, int N>
auto forward_kernel(bool fixed) {
  return fixed ? forward_partials_kernel<scalar_t, label_t, N, true>
               : forward_partials_kernel<scalar_t, label_t, N, false>;
}

// Whether the anchor-aligned walk can take a call (ForwardWalk, dr_loss_kernels.h): the
// conditions forward_aligned_kernel relies on.
template <typename scalar_t>
bool aligned_walk_applies(const void* logits, const Problem& s, bool fixed) {
  constexpr int N = vec_width<scalar_t>();
  return sizeof(scalar_t) < 8 && fixed && s.classes % N == 0 &&
         reinterpret_cast<uintptr_t>(logits) % 16 == 0 &&
         s.anchors * s.classes < (int64_t(1) << 30);
}

// The forward kernel a call runs (the occupancy query and the launch must agree); `walk` is
// the plan's, kGeneral unless aligned_walk_applies.
template <typename scalar_t, typename label_t>
auto forward_kernel_for(const Problem& s, bool fixed, ForwardWalk walk) {
  constexpr int N = vec_width<scalar_t>();
  if constexpr (sizeof(scalar_t) < 8) {
    if (walk == ForwardWalk::kAligned) return forward_aligned_kernel<scalar_t, label_t, false>;
    if (walk == ForwardWalk::kPipelined) return forward_aligned_kernel<scalar_t, label_t, true>;
  }
  return walk_width<scalar_t>(s.classes) == N ? forward_kernel<scalar_t, label_t, N>(fixed)
                                               : forward_kernel<scalar_t, label_t, 1>(fixed);
}

// The grid: one wave of the forward kernel over the current device, its multiprocessor count
// times the blocks per multiprocessor the occupancy calculator gives. Both are asked once per
// device and kernel and the product kept (no query during a CUDA graph capture after the first
// eager call, and no query cost per call; neither query synchronizes with the host).
template <typename scalar_t, typename label_t>
int64_t forward_wave(const Problem& s, bool fixed, ForwardWalk walk) {
  constexpr int kMaxDevices = 64;
  // [device][kernel]: the general walk's four (vectors or not, fixed shifts or not), then the
  // aligned and the pipelined walk.
  static std::atomic<int64_t> cached[kMaxDevices][6];
  const int wide = walk_width<scalar_t>(s.classes) == vec_width<scalar_t>() ? 1 : 0;
  const int kernel = walk == ForwardWalk::kGeneral ? wide * 2 + (fixed ? 1 : 0)
                                                   : 3 + static_cast<int>(walk);
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();  // the query's own error
    device = -1;
  }
  std::atomic<int64_t>* slot =
      device >= 0 && device < kMaxDevices ? &cached[device][kernel] : nullptr;
  int64_t wave = slot != nullptr ? slot->load(std::memory_order_relaxed) : 0;
  if (wave > 0) return wave;
  int multiprocessors = 0;
  int blocks_per_sm = 0;
  if (device < 0 ||
      cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device) !=
          cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks_per_sm, forward_kernel_for<scalar_t, label_t>(s, fixed, walk), kThreads, 0) !=
          cudaSuccess ||
      multiprocessors < 1 || blocks_per_sm < 1) {
    // The queries' own error: a grid of one block per launch bound (the launch that follows
    // reports a device that does not work), not kept.
    (void)cudaGetLastError();
    return multiprocessors > 0 ? int64_t(multiprocessors) * kMinBlocksPerSM : kMinBlocksPerSM;
  }
  wave = int64_t(multiprocessors) * blocks_per_sm;
  if (slot != nullptr) slot->store(wave, std::memory_order_relaxed);
  return wave;
}

bool fixed_shifts(const LossOptions& hp) {
  const Hyper<double> h = make_hyper<double>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
  return h.fixed_neg && h.fixed_pos;
}

}  // namespace

LaunchPlan plan_launch(LogitsType logits_type, const void* logits, LabelsType labels_type,
                       const Problem& s, const LossOptions& hp, ForwardWalk walk,
                       int64_t blocks_per_group_override) {
  LaunchPlan plan{0, 0, 0, 0, ForwardWalk::kGeneral};
  if (s.groups <= 0 || s.anchors <= 0 || s.classes <= 0) return plan;
  const bool fixed = fixed_shifts(hp);
  int64_t wave = 0;
  dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    if (walk != ForwardWalk::kGeneral && aligned_walk_applies<scalar_t>(logits, s, fixed)) {
      plan.forward_walk = walk;
    }
    wave = forward_wave<scalar_t, decltype(label_tag)>(s, fixed, plan.forward_walk);
    return cudaSuccess;
  });
  const int64_t elements = s.anchors * s.classes;
  int64_t blocks = ceil_div(wave, s.groups);
  const int64_t by_size = ceil_div(elements, kMinElementsPerBlock);
  if (blocks > by_size) blocks = by_size;
  if (blocks_per_group_override > 0) blocks = blocks_per_group_override;
  if (blocks < 1) blocks = 1;
  plan.blocks_per_group = blocks;
  plan.per_block = ceil_div(ceil_div(elements, blocks), kRangeAlign) * kRangeAlign;
  const int64_t items = s.groups * blocks;
  plan.grid = items < wave ? items : wave;
  if (plan.grid > kMaxGrid) plan.grid = kMaxGrid;
  plan.workspace_doubles = items * kPartialDoubles;
  return plan;
}

cudaError_t launch_forward(LogitsType logits_type, const void* logits, LabelsType labels_type,
                           const void* labels, const Problem& s, const LossOptions& hp,
                           const LaunchPlan& plan, double* workspace, void* losses,
                           void* stats, cudaStream_t stream) {
  if (s.groups <= 0) return cudaSuccess;
  return dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    using label_t = decltype(label_tag);
    using acc_t = typename AccOf<scalar_t>::type;
    if (plan.blocks_per_group > 0) {
      const Hyper<acc_t> h =
          make_hyper<acc_t>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
      const cudaError_t error =
          launch(forward_kernel_for<scalar_t, label_t>(s, fixed_shifts(hp), plan.forward_walk),
                 static_cast<unsigned>(plan.grid), kThreads, stream,
                 static_cast<const scalar_t*>(logits), static_cast<const label_t*>(labels),
                 s.groups, s.anchors, s.classes, plan.blocks_per_group, plan.per_block,
                 hp.first_label, h, workspace);
      if (error != cudaSuccess) return error;
    }
    const Hyper<double> hd =
        make_hyper<double>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin);
    const int64_t finalize_blocks = ceil_div(s.groups, kFinalizeWarps);
    const unsigned grid = static_cast<unsigned>(
        finalize_blocks < kMaxFinalizeGrid ? finalize_blocks : kMaxFinalizeGrid);
    return launch(finalize_kernel<acc_t>, grid, kFinalizeThreads, stream,
                  static_cast<const double*>(workspace), s.groups, plan.blocks_per_group, hd,
                  static_cast<acc_t*>(losses), static_cast<acc_t*>(stats));
  });
}

cudaError_t launch_backward(LogitsType logits_type, const void* grad_losses, const void* logits,
                            LabelsType labels_type, const void* labels, const void* stats,
                            const Problem& s, const LossOptions& hp, const LaunchPlan& plan,
                            void* grad_logits, cudaStream_t stream) {
  if (plan.blocks_per_group == 0) return cudaSuccess;  // no element to write
  return dispatch(logits_type, labels_type, [&](auto scalar_tag, auto label_tag) {
    using scalar_t = decltype(scalar_tag);
    using label_t = decltype(label_tag);
    using acc_t = typename AccOf<scalar_t>::type;
    constexpr int N = vec_width<scalar_t>();
    constexpr int kElement = static_cast<int>(sizeof(scalar_t));
    // The gradient is stored in 16-byte vectors; the logits are loaded in 16-byte vectors
    // too when they share the gradient's offset from a 16-byte boundary, else element by
    // element (whole elements: offsets are multiples of the element size).
    auto kernel = backward_kernel<scalar_t, label_t, 1, kElement>;
    if (walk_width<scalar_t>(s.classes) == N) {
      kernel = shared_alignment(logits, grad_logits) >= 16
                   ? backward_kernel<scalar_t, label_t, N, 16>
                   : backward_kernel<scalar_t, label_t, N, kElement>;
    }
    return launch(kernel, static_cast<unsigned>(plan.grid), kThreads, stream,
                  static_cast<const acc_t*>(grad_losses), static_cast<const scalar_t*>(logits),
                  static_cast<const label_t*>(labels), static_cast<const acc_t*>(stats),
                  s.groups, s.anchors, s.classes, plan.blocks_per_group, plan.per_block,
                  hp.first_label,
                  make_hyper<acc_t>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin),
                  make_hyper<double>(hp.pos_lambda, hp.neg_lambda, hp.L, hp.tau, hp.margin),
                  static_cast<scalar_t*>(grad_logits));
  });
}

}  // namespace cuda
}  // namespace drloss
