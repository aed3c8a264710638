#include "client/cluster_check.h"

#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace ps {
namespace {

absl::Status BadAddress(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("'", text, "' is not HOST:PORT: ", why));
}

bool IsHostNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
         c == '-' || c == '_';
}

bool IsIpv6Char(char c) {
  // Hex digits, ':', an embedded IPv4 address's '.', and a zone ("%eth0").
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == ':' ||
         c == '.' || c == '%' || c == '-' || c == '_';
}

absl::StatusOr<uint16_t> ParsePort(absl::string_view text,
                                   absl::string_view port) {
  if (port.empty()) return BadAddress(text, "it has no port");
  for (char c : port) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return BadAddress(text,
                        absl::StrCat("the port '", port, "' is not a number"));
    }
  }
  // Digit by digit, so that no number is too long to read.
  uint32_t value = 0;
  for (char c : port) {
    value = value * 10 + static_cast<uint32_t>(c - '0');
    if (value > 65535) {
      return BadAddress(text,
                        absl::StrCat("the port ", port, " is above 65535"));
    }
  }
  if (value == 0) {
    return BadAddress(
        text,
        "port 0 cannot be connected to; give the port the shard listens "
        "on");
  }
  return static_cast<uint16_t>(value);
}

// Two addresses name the same server when this is the same.
std::string AddressKey(const ServerAddress& address) {
  return absl::StrCat(absl::AsciiStrToLower(address.host), ":", address.port);
}

}  // namespace

std::string ServerAddress::ToString() const {
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<ServerAddress> ParseServerAddress(absl::string_view text) {
  if (text.empty()) return BadAddress(text, "it is empty");
  if (absl::StrContains(text, '/')) {
    return BadAddress(text,
                      "it has a '/'; give the shard's HOST:PORT without a "
                      "scheme or path");
  }
  ServerAddress address;
  absl::string_view port;
  if (text[0] == '[') {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos) {
      return BadAddress(text, "the '[' of an IPv6 address has no ']'");
    }
    const absl::string_view inside = text.substr(1, close - 1);
    if (inside.empty()) return BadAddress(text, "it has no host");
    for (char c : inside) {
      if (!IsIpv6Char(c)) {
        return BadAddress(
            text, absl::StrCat("'", inside, "' is not an IPv6 address"));
      }
    }
    address.host = std::string(text.substr(0, close + 1));
    absl::string_view rest = text.substr(close + 1);
    if (rest.empty()) return BadAddress(text, "it has no port");
    if (rest[0] != ':') {
      return BadAddress(text, "the ']' must be followed by ':PORT'");
    }
    port = rest.substr(1);
  } else {
    const size_t colon = text.find(':');
    if (colon == absl::string_view::npos) {
      return BadAddress(text, "it has no port");
    }
    if (text.find(':', colon + 1) != absl::string_view::npos) {
      return BadAddress(text,
                        "it has more than one ':'; an IPv6 address goes in "
                        "brackets, e.g. [::1]:50051");
    }
    const absl::string_view host = text.substr(0, colon);
    if (host.empty()) return BadAddress(text, "it has no host");
    for (char c : host) {
      if (!IsHostNameChar(c)) {
        return BadAddress(
            text, absl::StrCat("the host '", host,
                               "' has a character that no host name has"));
      }
    }
    address.host = std::string(host);
    port = text.substr(colon + 1);
  }
  PS_ASSIGN_OR_RETURN(address.port, ParsePort(text, port));
  return address;
}

absl::Status CheckServerAddresses(const std::vector<std::string>& addresses) {
  if (addresses.empty()) {
    return absl::InvalidArgumentError("no shard addresses given");
  }
  std::map<std::string, const std::string*> seen;
  for (const std::string& text : addresses) {
    PS_ASSIGN_OR_RETURN(ServerAddress address, ParseServerAddress(text));
    auto [it, added] = seen.emplace(AddressKey(address), &text);
    if (!added) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", text, "' is listed twice",
          *it->second == text ? std::string()
                              : absl::StrCat(" (first as '", *it->second, "')"),
          "; list each shard once"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ParseServerList(
    absl::string_view text) {
  std::vector<std::string> entries;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    const absl::string_view entry = absl::StripAsciiWhitespace(part);
    if (entry.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", text, "' has an empty entry; give HOST:PORT,HOST:PORT,..."));
    }
    entries.emplace_back(entry);
  }
  PS_RETURN_IF_ERROR(CheckServerAddresses(entries));
  std::vector<std::string> addresses;
  for (const std::string& entry : entries) {
    PS_ASSIGN_OR_RETURN(ServerAddress address, ParseServerAddress(entry));
    addresses.push_back(address.ToString());
  }
  return addresses;
}

absl::StatusOr<std::vector<size_t>> PlaceShards(
    const std::vector<std::string>& addresses,
    const std::vector<std::optional<v1::ClusterInfo>>& infos) {
  auto refuse = [](absl::string_view what) {
    return absl::FailedPreconditionError(
        absl::StrCat("not one cluster: ", what));
  };
  std::vector<size_t> answered;
  for (size_t i = 0; i < infos.size(); ++i) {
    if (infos[i].has_value()) answered.push_back(i);
  }
  std::vector<size_t> order;
  if (answered.empty()) {
    for (size_t i = 0; i < addresses.size(); ++i) order.push_back(i);
    return order;
  }
  const v1::ClusterInfo& first = *infos[answered[0]];
  auto disagree = [&](absl::string_view field, auto value) -> absl::Status {
    std::vector<std::string> says;
    bool differs = false;
    for (size_t i : answered) {
      differs |= value(*infos[i]) != value(first);
      says.push_back(absl::StrCat(addresses[i], " says ", value(*infos[i])));
    }
    if (!differs) return absl::OkStatus();
    return refuse(absl::StrCat("shards disagree on ", field, ": ",
                               absl::StrJoin(says, ", ")));
  };
  PS_RETURN_IF_ERROR(disagree(
      "num_shards", [](const v1::ClusterInfo& i) { return i.num_shards(); }));
  PS_RETURN_IF_ERROR(disagree(
      "block_size", [](const v1::ClusterInfo& i) { return i.block_size(); }));
  PS_RETURN_IF_ERROR(disagree("consistency", [](const v1::ClusterInfo& i) {
    return absl::StrCat("\"", i.consistency(), "\"");
  }));
  PS_RETURN_IF_ERROR(disagree(
      "num_workers", [](const v1::ClusterInfo& i) { return i.num_workers(); }));
  PS_RETURN_IF_ERROR(
      disagree("quorum", [](const v1::ClusterInfo& i) { return i.quorum(); }));

  const uint32_t num_shards = first.num_shards();
  if (num_shards == 0 || first.block_size() == 0) {
    return refuse(absl::StrCat("shards report num_shards = ", num_shards,
                               " and block_size = ", first.block_size()));
  }
  if (addresses.size() != num_shards) {
    return refuse(absl::StrCat(
        addresses.size(), addresses.size() == 1 ? " address" : " addresses",
        " given (", absl::StrJoin(addresses, ", "),
        ") but the shards report num_shards = ", num_shards));
  }
  std::vector<std::vector<size_t>> holders(num_shards);
  for (size_t i : answered) {
    const uint32_t index = infos[i]->shard_index();
    if (index >= num_shards) {
      return refuse(absl::StrCat(addresses[i], " reports shard_index ", index,
                                 " of num_shards = ", num_shards));
    }
    holders[index].push_back(i);
  }
  const bool all_answered = answered.size() == addresses.size();
  std::vector<std::string> problems;
  for (uint32_t index = 0; index < num_shards; ++index) {
    if (holders[index].size() > 1) {
      std::vector<std::string> names;
      for (size_t i : holders[index]) names.push_back(addresses[i]);
      problems.push_back(absl::StrCat("shard_index ", index, " is served by ",
                                      absl::StrJoin(names, " and ")));
    } else if (holders[index].empty() && all_answered) {
      problems.push_back(absl::StrCat("no address serves shard_index ", index));
    }
  }
  if (!problems.empty()) return refuse(absl::StrJoin(problems, "; "));
  // Those that did not answer fill the free places, in list order. With no
  // index repeated there are exactly as many free places as silent servers.
  size_t next_silent = 0;
  for (uint32_t index = 0; index < num_shards; ++index) {
    if (holders[index].empty()) {
      while (infos[next_silent].has_value()) ++next_silent;
      order.push_back(next_silent++);
    } else {
      order.push_back(holders[index][0]);
    }
  }
  return order;
}

absl::StatusOr<std::vector<size_t>> CheckCluster(
    const std::vector<std::string>& addresses,
    const std::vector<v1::ClusterInfo>& infos) {
  return PlaceShards(addresses, std::vector<std::optional<v1::ClusterInfo>>(
                                    infos.begin(), infos.end()));
}

}  // namespace ps
