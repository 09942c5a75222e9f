// Build facts that setup.py compiles in as hex-encoded macros (hex_macro there), so that the
// extension itself can say how it was built.
#pragma once

#include <string>

#ifndef DRLOSS_BUILD_RECORD_HEX
#define DRLOSS_BUILD_RECORD_HEX 0
#endif
#ifndef DRLOSS_CUDA_ABSENT_REASON_HEX
#define DRLOSS_CUDA_ABSENT_REASON_HEX 0
#endif
#define DRLOSS_STRINGIZE_TOKEN(x) #x
#define DRLOSS_STRINGIZE(x) DRLOSS_STRINGIZE_TOKEN(x)

namespace drloss {

// The text a macro's hex digits encode ("0", a macro left unset, is the empty text).
inline std::string decode_hex(const char* hex) {
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  std::string text;
  for (; hex[0] != '\0' && hex[1] != '\0'; hex += 2) {
    text += static_cast<char>(nibble(hex[0]) * 16 + nibble(hex[1]));
  }
  return text;
}

// JSON: torch and CUDA versions built against, architectures, why the CUDA kernels are absent.
inline std::string build_record() { return decode_hex(DRLOSS_STRINGIZE(DRLOSS_BUILD_RECORD_HEX)); }

inline std::string cuda_absent_reason() {
  return decode_hex(DRLOSS_STRINGIZE(DRLOSS_CUDA_ABSENT_REASON_HEX));
}

}  // namespace drloss
