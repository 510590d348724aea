#include <cur4llm/model/slot_registry.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <map>
#include <mutex>
#include <stdexcept>

namespace cur4llm::model {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, SlotKind> kinds;
};

Registry& registry() {
  static Registry r;  // built on first use, so registrars in any source file may run first
  return r;
}

nlohmann::json field_json(const SlotSpec& spec, const std::string& key) {
  auto it = spec.fields.find(key);
  if (it == spec.fields.end()) {
    throw std::runtime_error(fmt::format("{}: layer \"{}\" ({}) has no \"{}\"", spec.source, spec.name, spec.kind, key));
  }
  try {
    return nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error(fmt::format("{}: layer \"{}\": \"{}\" is not valid JSON", spec.source, spec.name, key));
  }
}

std::runtime_error type_error(const SlotSpec& spec, const std::string& key, const char* what) {
  return std::runtime_error(fmt::format("{}: layer \"{}\": \"{}\" must be {}", spec.source, spec.name, key, what));
}

}  // namespace

int64_t SlotSpec::integer(const std::string& key) const {
  const auto v = field_json(*this, key);
  if (!v.is_number_integer()) throw type_error(*this, key, "an integer");
  return v.get<int64_t>();
}

bool SlotSpec::boolean(const std::string& key) const {
  const auto v = field_json(*this, key);
  if (!v.is_boolean()) throw type_error(*this, key, "true or false");
  return v.get<bool>();
}

bool SlotSpec::boolean(const std::string& key, bool fallback) const { return has(key) ? boolean(key) : fallback; }

std::string SlotSpec::string(const std::string& key) const {
  const auto v = field_json(*this, key);
  if (!v.is_string()) throw type_error(*this, key, "a string");
  return v.get<std::string>();
}

void register_slot_kind(SlotKind kind) {
  if (kind.kind.empty() || !kind.describe || !kind.load) {
    throw std::logic_error("register_slot_kind: a kind needs a name, describe and load");
  }
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const std::string name = kind.kind;
  if (!r.kinds.emplace(name, std::move(kind)).second) {
    throw std::logic_error(fmt::format("register_slot_kind: \"{}\" is registered twice", name));
  }
}

const SlotKind& find_slot_kind(const std::string& kind) {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  auto it = r.kinds.find(kind);
  if (it == r.kinds.end()) {
    std::string known;
    for (const auto& [name, k] : r.kinds) known += (known.empty() ? "" : ", ") + name;
    throw std::runtime_error(fmt::format("no slot kind \"{}\" is known to this build (known: {})", kind, known));
  }
  return it->second;
}

std::vector<std::string> slot_kind_names() {
  auto& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> out;
  for (const auto& [name, k] : r.kinds) out.push_back(name);
  return out;
}

}  // namespace cur4llm::model
