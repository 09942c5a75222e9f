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
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdio>
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

// "%g": what an std::ostream writes by default (6 significant digits, "nan", "inf").
inline std::string piece(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", value);
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

// "cuda:0", formatted inside libc10.
inline std::string piece(const c10::Device& device) { return device.str(); }

template <typename... Args>
std::string cat(const Args&... args) {
  std::string text;
  (text += ... += piece(args));
  return text;
}

}  // namespace message
}  // namespace drloss

// TORCH_CHECK and TORCH_CHECK_VALUE with the message concatenated by drloss::message::cat
// (evaluated only when the check fails).
#define DRLOSS_CHECK(cond, ...) TORCH_CHECK(cond, ::drloss::message::cat(__VA_ARGS__))
#define DRLOSS_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::drloss::message::cat(__VA_ARGS__))
