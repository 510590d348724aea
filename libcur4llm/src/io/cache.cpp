#include <cur4llm/io/cache.h>

#include <cur4llm/io/files.h>

#include <fmt/format.h>

#include <algorithm>
#include <sys/stat.h>
#include <vector>

namespace cur4llm::io {

uint64_t fnv1a64(const std::string& data, uint64_t seed) {
  uint64_t h = seed;
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::string hex64(uint64_t value) { return fmt::format("{:016x}", value); }

std::string CacheKey::hash() const {
  uint64_t h = fnv1a64(kind);
  for (const auto& [k, v] : fields) {
    h = fnv1a64(std::string(1, '\0') + k + '=' + v, h);  // NUL-separated: "a=bc" differs from "ab=c"
  }
  return hex64(h);
}

std::string CacheKey::file_name(const std::string& extension) const { return kind + "-" + hash() + "." + extension; }

std::map<std::string, std::string> CacheKey::as_metadata() const {
  std::map<std::string, std::string> out{{"key.kind", kind}};
  for (const auto& [k, v] : fields) out["key." + k] = v;
  return out;
}

std::string CacheKey::mismatch(const std::map<std::string, std::string>& metadata) const {
  const auto want = as_metadata();
  for (const auto& [k, v] : want) {
    auto it = metadata.find(k);
    if (it == metadata.end()) return fmt::format("{} is missing", k);
    if (it->second != v) return fmt::format("{} is \"{}\", expected \"{}\"", k, it->second, v);
  }
  for (const auto& [k, v] : metadata) {
    if (k.rfind("key.", 0) == 0 && !want.count(k)) return fmt::format("unexpected {}", k);
  }
  return {};
}

std::string model_fingerprint(const std::filesystem::path& folder) {
  uint64_t h = fnv1a64(read_file(folder / "config.json"));
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    const auto name = entry.path().filename().string();
    if (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0) files.push_back(entry.path());
    if (name == "model.safetensors.index.json") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0) continue;
    h = fnv1a64(fmt::format("{}:{}:{}.{}", f.filename().string(), st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec), h);
  }
  return hex64(h);
}

}  // namespace cur4llm::io
