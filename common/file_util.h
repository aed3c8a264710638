// Reading the small files a program is pointed at by its flags or options:
// TLS certificates and keys, CA bundles, token files.
//
// Thread safety: every function is thread-safe.
#ifndef PS_COMMON_FILE_UTIL_H_
#define PS_COMMON_FILE_UTIL_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ps {

// The most ReadSmallFile reads. A certificate bundle is a few hundred KiB;
// anything larger is the wrong file (or a device that never ends).
inline constexpr size_t kMaxSmallFileBytes = size_t{16} << 20;

// The whole contents of the file at `path`, byte for byte. `what` names the
// file in errors ("TLS CA file", "--tls_cert_file"). INVALID_ARGUMENT,
// naming `what` and `path`, when it cannot be opened or read (with the
// system's reason), is empty, or holds more than kMaxSmallFileBytes.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          absl::string_view what);

}  // namespace ps

#endif  // PS_COMMON_FILE_UTIL_H_
