// Aligned text tables for psctl's human-readable output.
//
// Thread safety: thread-compatible.
#ifndef PS_CLIENT_PSCTL_TABLE_H_
#define PS_CLIENT_PSCTL_TABLE_H_

#include <ostream>
#include <string>
#include <vector>

namespace ps::psctl {

class Table {
 public:
  explicit Table(std::vector<std::string> header)
      : header_(std::move(header)) {}

  // REQUIRES: row.size() == the header's size.
  void AddRow(std::vector<std::string> row) { rows_.push_back(std::move(row)); }

  // The header and rows, each column padded to its widest cell and
  // separated by two spaces; the last column is not padded.
  void Print(std::ostream& out) const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace ps::psctl

#endif  // PS_CLIENT_PSCTL_TABLE_H_
