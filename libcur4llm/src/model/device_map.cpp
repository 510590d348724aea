#include <cur4llm/model/device_map.h>

#include <cur4llm/io/files.h>

#include "util/strings.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <limits>
#include <stdexcept>

namespace cur4llm::model {
namespace {

c10::Device parse_map_device(const std::string& name, const std::string& flag) {
  try {
    c10::Device d(name);
    if (d.is_cpu() || d.is_cuda()) return d;
  } catch (const std::exception&) {
  }
  throw std::invalid_argument(fmt::format("{}: unknown device \"{}\" (use cpu or cuda:N)", flag, name));
}

// "A-B" or "A" -> [A, B].
std::pair<int64_t, int64_t> parse_range(const std::string& text) {
  const auto dash = text.find('-');
  auto number = [&](const std::string& s) {
    const std::string t = util::trim(s);
    if (t.empty() || !std::all_of(t.begin(), t.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); })) {
      throw std::invalid_argument(fmt::format("--device_map: \"{}\" is not a layer range (A-B)", text));
    }
    return std::stoll(t);
  };
  if (dash == std::string::npos) {
    const int64_t a = number(text);
    return {a, a};
  }
  const int64_t a = number(text.substr(0, dash)), b = number(text.substr(dash + 1));
  if (b < a) throw std::invalid_argument(fmt::format("--device_map: layer range \"{}\" ends before it starts", text));
  return {a, b};
}

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

int64_t budget_of(const PlacementInputs& in, const c10::Device& d) {
  const auto it = in.budget.find(d.str());
  return it == in.budget.end() ? kUnlimited : it->second;
}

}  // namespace

int64_t parse_memory_size(const std::string& text, const std::string& flag) {
  const std::string t = util::trim(text);
  size_t used = 0;
  double value = -1;
  try {
    value = std::stod(t, &used);
  } catch (const std::exception&) {
    value = -1;
  }
  std::string unit = util::trim(t.substr(std::min(used, t.size())));
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::map<std::string, double> units = {
      {"", 1},       {"B", 1},          {"KB", 1e3},        {"MB", 1e6},          {"GB", 1e9},   {"TB", 1e12},
      {"KIB", 1024.0}, {"MIB", 1048576.0}, {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}};
  const auto u = units.find(unit);
  if (!(value >= 0) || u == units.end() || !std::isfinite(value * u->second) || value * u->second > 9e18) {
    throw std::invalid_argument(fmt::format("{}: \"{}\" is not a size (e.g. 20GiB, 1.5GB, 512MiB)", flag, text));
  }
  return static_cast<int64_t>(value * u->second);
}

std::map<std::string, int64_t> parse_max_memory(const std::string& text) {
  std::map<std::string, int64_t> out;
  for (const auto& item : util::split_items(text, ',')) {
    const auto eq = item.find('=');
    if (eq == std::string::npos) {
      throw std::invalid_argument(fmt::format("--max_memory: \"{}\" is not DEVICE=SIZE (e.g. cuda:0=20GiB)", item));
    }
    const auto device = parse_map_device(util::trim(item.substr(0, eq)), "--max_memory");
    if (out.count(device.str())) throw std::invalid_argument(fmt::format("--max_memory: {} is given twice", device.str()));
    out[device.str()] = parse_memory_size(item.substr(eq + 1));
  }
  return out;
}

DeviceMap DeviceMap::parse(const std::string& spec) {
  DeviceMap map;
  const std::string s = util::trim(spec);
  if (s == "auto") {
    map.automatic = true;
    return map;
  }
  auto add = [&](const std::string& device, const std::string& range) {
    const auto [a, b] = parse_range(range);
    map.ranges.push_back({parse_map_device(util::trim(device), "--device_map"), a, b});
  };
  if (s.size() > 5 && s.substr(s.size() - 5) == ".json") {
    if (!std::filesystem::is_regular_file(s)) throw std::runtime_error(fmt::format("--device_map: no file {}", s));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(io::read_file(s));
      if (j.is_object()) {
        for (const auto& [device, range] : j.items()) add(device, range.get<std::string>());
      } else if (j.is_array()) {
        for (const auto& e : j) add(e.at("device").get<std::string>(), e.at("layers").get<std::string>());
      } else {
        throw std::runtime_error("not an object or a list");
      }
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(fmt::format("{}: not a device map ({})", s, e.what()));
    }
  } else {
    for (const auto& item : util::split_items(s, ',')) {
      const auto eq = item.find('=');
      if (eq == std::string::npos) {
        throw std::invalid_argument(
            fmt::format("--device_map: \"{}\" is not DEVICE=A-B (e.g. cuda:0=0-39,cuda:1=40-79), auto or a .json file", item));
      }
      add(item.substr(0, eq), item.substr(eq + 1));
    }
  }
  if (map.ranges.empty()) throw std::invalid_argument("--device_map names no layer");
  return map;
}

int64_t Placement::num_offloaded() const { return std::count(offloaded.begin(), offloaded.end(), true); }

std::string Placement::describe() const {
  std::string out = fmt::format("embed {}; layers", embed.str());
  const auto n = static_cast<int64_t>(layers.size());
  for (int64_t i = 0; i < n;) {
    int64_t j = i;
    while (j + 1 < n && stage[j + 1] == stage[i] && offloaded[j + 1] == offloaded[i]) ++j;
    out += fmt::format("{} {}{} {}{}", i == 0 ? "" : ",", i, j > i ? fmt::format("-{}", j) : "", layers[i].str(),
                       offloaded[i] ? " (offloaded)" : "");
    i = j + 1;
  }
  return out + fmt::format("; head {}", head.str());
}

Placement plan_placement(const DeviceMap& map, const PlacementInputs& in) {
  const int64_t n = in.num_layers;
  Placement p;
  p.layers.assign(static_cast<size_t>(n), c10::Device(c10::kCPU));
  p.stage.assign(static_cast<size_t>(n), -1);
  p.offloaded.assign(static_cast<size_t>(n), false);
  std::map<std::string, int64_t> used;  // bytes per device name
  if (!map.automatic) {
    for (size_t e = 0; e < map.ranges.size(); ++e) {
      const auto& r = map.ranges[e];
      if (r.last >= n) {
        throw std::invalid_argument(fmt::format("--device_map: layer {} is beyond the model's {} layers", r.last, n));
      }
      for (int64_t i = r.first; i <= r.last; ++i) {
        if (p.stage[i] >= 0) throw std::invalid_argument(fmt::format("--device_map: layer {} is placed twice", i));
        p.layers[i] = r.device;
        p.stage[i] = static_cast<int64_t>(e);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      if (p.stage[i] < 0) throw std::invalid_argument(fmt::format("--device_map: layer {} is on no device", i));
    }
    p.embed = p.layers.front();
    p.head = p.layers.back();
    used[p.embed.str()] += in.embed_bytes;
    used[p.head.str()] += in.head_bytes;
    for (int64_t i = 0; i < n; ++i) used[p.layers[i].str()] += in.layer_bytes;
    // Over a budget: that device's last layers stay in host memory.
    for (int64_t i = n - 1; i >= 0; --i) {
      const auto& d = p.layers[i];
      if (used[d.str()] > budget_of(in, d)) {
        p.offloaded[i] = true;
        used[d.str()] -= in.layer_bytes;
      }
    }
    return p;
  }

  if (in.devices.empty()) throw std::invalid_argument("--device_map auto: no device to place the model on");
  const auto k = static_cast<int64_t>(in.devices.size());
  p.embed = in.devices.front();
  p.head = in.devices.back();
  // Layers each device can hold once the embedding and the head are counted.
  std::vector<int64_t> room(static_cast<size_t>(k));
  bool all_unlimited = true;
  for (int64_t d = 0; d < k; ++d) {
    const auto& dev = in.devices[d];
    int64_t reserved = (d == 0 ? in.embed_bytes : 0) + (d == k - 1 ? in.head_bytes : 0);
    const int64_t b = budget_of(in, dev);
    if (b == kUnlimited) {
      room[d] = n;
    } else {
      all_unlimited = false;
      room[d] = in.layer_bytes > 0 ? std::max<int64_t>(0, (b - reserved) / in.layer_bytes) : n;
      room[d] = std::min(room[d], n);
    }
  }
  // Shares proportional to the room (equal when nothing is capped), then capped by it.
  std::vector<int64_t> count(static_cast<size_t>(k), 0);
  double total_weight = 0;
  int64_t total_room = 0;
  for (int64_t d = 0; d < k; ++d) {
    total_weight += all_unlimited ? 1.0 : static_cast<double>(room[d]);
    total_room += room[d];
  }
  const int64_t want = std::min(n, total_room);
  int64_t placed = 0;
  if (total_weight > 0) {
    double acc = 0;
    for (int64_t d = 0; d < k; ++d) {
      acc += (all_unlimited ? 1.0 : static_cast<double>(room[d])) * static_cast<double>(want) / total_weight;
      const int64_t upto = static_cast<int64_t>(std::llround(acc));
      count[d] = std::min(room[d], std::max<int64_t>(0, upto - placed));
      placed += count[d];
    }
    // Rounding left some out: the first devices with room take them.
    for (int64_t d = 0; d < k && placed < want; ++d) {
      const int64_t more = std::min(room[d] - count[d], want - placed);
      count[d] += more;
      placed += more;
    }
  }
  int64_t i = 0;
  for (int64_t d = 0; d < k; ++d) {
    for (int64_t c = 0; c < count[d]; ++c, ++i) {
      p.layers[i] = in.devices[d];
      p.stage[i] = d;
    }
  }
  for (; i < n; ++i) {  // beyond every budget: run on the last device from host memory
    p.layers[i] = in.devices.back();
    p.stage[i] = k - 1;
    p.offloaded[i] = true;
  }
  return p;
}

}  // namespace cur4llm::model
