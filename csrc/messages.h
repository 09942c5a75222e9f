// The error messages of the argument checks, built by string concatenation.
//
// Nothing in this extension formats through an iostream. A g++ 13 toolchain that links its own
// static copy of libstdc++ into the extension gave a build in which writing a number to an
// std::ostream crashed (SIGSEGV in std::ostream::_M_insert<long>), and TORCH_CHECK formats each
// argument that is not a string that way (c10::str). Given one std::string, TORCH_CHECK formats
// nothing, so DRLOSS_CHECK builds that string first (numbers through std::to_string and
// snprintf). tests/test_sources.py keeps the sources so.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/SymInt.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>

namespace drloss {
namespace message {

inline std::string piece(const char* text) { return text; }
inline std::string piece(const std::string& text) { return text; }

template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
std::string piece(T value) {
  return std::to_string(value);
}

// The shortest "%.<n>g" (n >= 6) that reads back as the same double, so that a message prints
// the value actually compared (1e-4 given as a float32 tensor is 9.999999747378752e-05, below
// the bound 0.0001 that "%g" would print). number_text in drloss_cuda/_common.py is its twin.
inline std::string piece(double value) {
  char text[40];
  for (int digits = 6; digits <= 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, value);
    if (!(value == value) || std::strtod(text, nullptr) == value) break;
  }
  return text;
}

// "[2, 5, 3]", as c10 writes sizes.
inline std::string piece(c10::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(sizes[i]);
  }
  return text + "]";
}

// A size that may be symbolic (traced under torch.compile or torch.export): the number it
// stands for in the traced call where there is one (a message is formatted only on the way to an
// error, so the guard this adds never matters), else its expression ("u0").
inline std::string piece(const c10::SymInt& size) {
  if (auto value = size.maybe_as_int()) return std::to_string(*value);
  auto* node = size.toSymNodeImplUnowned();
  if (node->has_hint()) return std::to_string(node->guard_int(__FILE__, __LINE__));
  return node->str();
}

inline std::string piece(c10::SymIntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) text += ", ";
    text += piece(sizes[i]);
  }
  return text + "]";
}

// "cuda:0", formatted inside libc10.
inline std::string piece(const c10::Device& device) { return device.str(); }

// Messages raised outside the argument checks.
inline constexpr const char* kForwardModeAD =
    "sigmoid_dr_loss: forward-mode AD (torch.autograd.forward_ad, torch.func.jvp, torch.func.jacfwd, "
    "torch.func.hessian) is not supported: the fused op has a reverse-mode formula only. Use "
    "loss.backward() or torch.autograd.grad, or drloss_cuda.reference.sigmoid_dr_loss for forward mode";
inline constexpr const char* kDoubleBackward =
    "sigmoid_dr_loss: double backward (a gradient of the gradient) is not implemented";

template <typename... Args>
std::string cat(const Args&... args) {
  std::string text;
  (text += ... += piece(args));
  return text;
}

}  // namespace message
}  // namespace drloss

// TORCH_CHECK, TORCH_CHECK_VALUE and TORCH_CHECK_NOT_IMPLEMENTED with the message concatenated by drloss::message::cat
// (evaluated only when the check fails).
#define DRLOSS_CHECK(cond, ...) TORCH_CHECK(cond, ::drloss::message::cat(__VA_ARGS__))
#define DRLOSS_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::drloss::message::cat(__VA_ARGS__))
#define DRLOSS_CHECK_NOT_IMPLEMENTED(cond, ...) \
  TORCH_CHECK_NOT_IMPLEMENTED(cond, ::drloss::message::cat(__VA_ARGS__))
