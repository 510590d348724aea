#include "cur4llm/io/safetensors.h"

#include "cur4llm/io/files.h"
#include "io/atomic_file.h"
#include "io/json_parse.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>
#include <unordered_map>

namespace cur4llm::io {

namespace {

static_assert(sizeof(void*) == 8, "cur4llm assumes a 64-bit platform");

bool host_is_little_endian() {
  const uint16_t one = 1;
  uint8_t first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

struct DtypeEntry {
  const char* name;
  c10::ScalarType type;
  size_t itemsize;
};

// The dtypes that both LibTorch 1.13 and 2.x can hold. (U16/U32/U64 and the
// F8 types exist only in newer LibTorch.)
constexpr DtypeEntry kDtypes[] = {
    {"F64", c10::ScalarType::Double, 8},  {"F32", c10::ScalarType::Float, 4},
    {"F16", c10::ScalarType::Half, 2},    {"BF16", c10::ScalarType::BFloat16, 2},
    {"I64", c10::ScalarType::Long, 8},    {"I32", c10::ScalarType::Int, 4},
    {"I16", c10::ScalarType::Short, 2},   {"I8", c10::ScalarType::Char, 1},
    {"U8", c10::ScalarType::Byte, 1},     {"BOOL", c10::ScalarType::Bool, 1},
};

const DtypeEntry* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// The format's own limit on the JSON header (the reference implementation refuses larger ones).
constexpr uint64_t kMaxHeaderBytes = 100000000;

}  // namespace

std::string safetensors_dtype(c10::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d.name;
  }
  throw std::invalid_argument(std::string("scalar type ") + c10::toString(type) +
                              " cannot be stored in safetensors by cur4llm (supported: F64 F32 F16 BF16 "
                              "I64 I32 I16 I8 U8 BOOL)");
}

// ---------------------------------------------------------------------------
// SafetensorsFile

struct SafetensorsFile::Impl {
  std::filesystem::path path;
  void* map = nullptr;
  size_t map_size = 0;
  const uint8_t* data = nullptr;  // start of the data section
  uint64_t data_size = 0;
  std::vector<std::string> names;
  std::unordered_map<std::string, TensorInfo> infos;
  std::map<std::string, std::string> metadata;

  ~Impl() {
    if (map != nullptr) ::munmap(map, map_size);
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path.string() + ": " + what);
  }
  [[noreturn]] void fail_tensor(const std::string& name, const std::string& what) const {
    throw std::runtime_error(path.string() + ": tensor " + quoted(name) + ": " + what);
  }

  void open_and_map();
  void parse_header(const char* text, uint64_t length);
  TensorInfo parse_entry(const std::string& name, const nlohmann::json& entry) const;
  void check_layout() const;
};

void SafetensorsFile::Impl::open_and_map() {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail("file of " + std::to_string(size) + " bytes is too short for a safetensors header (needs at least 8)");
  }
  map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    map = nullptr;
    fail(std::string("cannot mmap: ") + std::strerror(err));
  }
  map_size = size;

  const auto* bytes = static_cast<const uint8_t*>(map);
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | bytes[i];  // little-endian u64
  if (header_length > size - 8) {
    fail("header length " + std::to_string(header_length) + " past the end of the file (size " +
         std::to_string(size) + ")");
  }
  if (header_length > kMaxHeaderBytes) {
    fail("header length " + std::to_string(header_length) + " exceeds the format's limit of " +
         std::to_string(kMaxHeaderBytes) + " bytes");
  }
  data = bytes + 8 + header_length;
  data_size = size - 8 - header_length;
  parse_header(reinterpret_cast<const char*>(bytes + 8), header_length);
}

TensorInfo SafetensorsFile::Impl::parse_entry(const std::string& name, const nlohmann::json& entry) const {
  if (!entry.is_object()) fail_tensor(name, "header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) fail_tensor(name, std::string("header entry has no \"") + key + "\"");
  }
  TensorInfo info;
  const auto& dtype = entry.at("dtype");
  if (!dtype.is_string()) fail_tensor(name, "\"dtype\" is not a string");
  info.dtype = dtype.get<std::string>();
  const DtypeEntry* known = find_dtype(info.dtype);
  if (known == nullptr) {
    fail_tensor(name, "dtype " + info.dtype + " is not supported (supported: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)");
  }

  const auto& shape = entry.at("shape");
  if (!shape.is_array()) fail_tensor(name, "\"shape\" is not an array");
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& dim : shape) {
    if (!dim.is_number_integer()) fail_tensor(name, "\"shape\" holds a non-integer " + dim.dump());
    if (dim.is_number_unsigned()) {
      const auto u = dim.get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) fail_tensor(name, "dimension " + dim.dump() + " is too large");
    }
    const auto d = dim.get<int64_t>();
    if (d < 0) fail_tensor(name, "negative dimension " + std::to_string(d) + " in shape " + shape.dump());
    info.shape.push_back(d);
    uint64_t next = 0;
    overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &next);
    numel = next;
  }

  const auto& offsets = entry.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    // nlohmann parses non-negative integers as unsigned; anything else is malformed.
    fail_tensor(name, "\"data_offsets\" must be two non-negative integers, got " + offsets.dump());
  }
  info.begin = offsets[0].get<uint64_t>();
  info.end = offsets[1].get<uint64_t>();
  if (info.begin > info.end) {
    fail_tensor(name, "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                          "] begin after end");
  }
  if (info.end > data_size) {
    fail_tensor(name, "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                          "] end past the data section (" + std::to_string(data_size) + " bytes)");
  }
  uint64_t expected = 0;
  overflow = overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(known->itemsize), &expected);
  if (overflow || info.end - info.begin != expected) {
    fail_tensor(name, "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) + "] span " +
                          std::to_string(info.end - info.begin) + " bytes but " + info.dtype + " shape " +
                          shape.dump() + " needs " + (overflow ? std::string("more than 2^64") : std::to_string(expected)));
  }
  return info;
}

void SafetensorsFile::Impl::parse_header(const char* text, uint64_t length) {
  if (length == 0 || text[0] != '{') fail("JSON header is not an object (it does not begin with '{')");
  detail::ParsedJson header;
  try {
    header = detail::parse_json_ordered(std::string_view(text, length), "header");
  } catch (const std::runtime_error& e) {
    fail(e.what());  // "header: malformed JSON: ..." (syntax, nesting, a key listed twice)
  }
  if (!header.value.is_object()) fail("JSON header is not an object");
  names.reserve(header.root_keys.size());
  infos.reserve(header.root_keys.size());
  for (const std::string& name : header.root_keys) {
    const nlohmann::json& value = header.value.at(name);
    if (name == "__metadata__") {
      if (!value.is_object()) fail("\"__metadata__\" is not a JSON object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string()) fail("\"__metadata__\" value for key " + quoted(m.key()) + " is not a string");
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    infos.emplace(name, parse_entry(name, value));
    names.push_back(name);
  }
  check_layout();
}

// The format requires the tensors to tile the data section exactly: sorted by
// offset, each begins where the previous ends, the first at 0 and the last at
// the end of the file. Anything else (a gap, an overlap, a header length a few
// bytes off) would read some tensor from the wrong bytes.
void SafetensorsFile::Impl::check_layout() const {
  std::vector<const std::pair<const std::string, TensorInfo>*> by_begin;
  by_begin.reserve(infos.size());
  for (const auto& kv : infos) by_begin.push_back(&kv);
  std::sort(by_begin.begin(), by_begin.end(), [](auto* a, auto* b) {
    if (a->second.begin != b->second.begin) return a->second.begin < b->second.begin;
    if (a->second.end != b->second.end) return a->second.end < b->second.end;
    return a->first < b->first;
  });
  uint64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const auto* kv : by_begin) {
    const TensorInfo& ti = kv->second;
    if (ti.begin < cursor) {
      fail_tensor(kv->first, "data_offsets overlap those of tensor " + quoted(*previous));
    }
    if (ti.begin > cursor) {
      fail_tensor(kv->first, "data_offsets [" + std::to_string(ti.begin) + ", " + std::to_string(ti.end) +
                                 "] leave a gap of " + std::to_string(ti.begin - cursor) + " bytes before it" +
                                 (previous ? " (after tensor " + quoted(*previous) + ")" : std::string()));
    }
    cursor = ti.end;
    previous = &kv->first;
  }
  if (cursor != data_size) {
    fail("the tensors cover " + std::to_string(cursor) + " bytes but the data section after the header holds " +
         std::to_string(data_size) + " (wrong header length, or bytes missing or added)");
  }
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : impl_(std::make_unique<Impl>()) {
  if (!host_is_little_endian()) throw std::runtime_error(path.string() + ": big-endian hosts are not supported");
  impl_->path = path;
  impl_->open_and_map();
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const std::filesystem::path& SafetensorsFile::path() const { return impl_->path; }
const std::vector<std::string>& SafetensorsFile::names() const { return impl_->names; }
bool SafetensorsFile::contains(const std::string& name) const { return impl_->infos.count(name) != 0; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = impl_->infos.find(name);
  if (it == impl_->infos.end()) impl_->fail_tensor(name, "no such tensor in the file");
  return it->second;
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
  const TensorInfo& ti = info(name);
  const DtypeEntry* d = find_dtype(ti.dtype);  // validated at open
  at::Tensor out = at::empty(ti.shape, at::TensorOptions().dtype(d->type).device(at::kCPU));
  const uint64_t nbytes = ti.end - ti.begin;
  if (nbytes > 0) std::memcpy(out.data_ptr(), impl_->data + ti.begin, nbytes);
  return out;
}

// ---------------------------------------------------------------------------
// Checkpoint

namespace {

std::vector<std::filesystem::path> safetensors_files_in(const std::filesystem::path& folder) {
  std::vector<std::filesystem::path> found;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    if (entry.path().extension() == ".safetensors" && entry.is_regular_file()) found.push_back(entry.path());
  }
  if (ec) throw std::runtime_error(folder.string() + ": cannot list the folder: " + ec.message());
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

Checkpoint Checkpoint::open_file(const std::filesystem::path& file) {
  Checkpoint ckpt;
  ckpt.files_.push_back(std::make_shared<SafetensorsFile>(file));
  for (const auto& name : ckpt.files_[0]->names()) ckpt.where_.emplace(name, 0);
  ckpt.description_ = file.string();
  return ckpt;
}

Checkpoint Checkpoint::open(const std::filesystem::path& folder) {
  std::error_code ec;
  if (!std::filesystem::is_directory(folder, ec)) {
    throw std::invalid_argument(folder.string() + ": not a model folder (no such directory)");
  }
  const auto index_path = folder / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path, ec)) {
    const nlohmann::json index = detail::parse_json(read_file(index_path), index_path.string());
    if (!index.is_object() || !index.contains("weight_map") || !index.at("weight_map").is_object()) {
      throw std::runtime_error(index_path.string() + ": no \"weight_map\" object");
    }
    Checkpoint ckpt;
    std::map<std::string, size_t> shard_index;  // shard file name -> position in files_
    for (const auto& [name, shard] : index.at("weight_map").items()) {
      if (!shard.is_string()) {
        throw std::runtime_error(index_path.string() + ": weight_map entry for tensor " + quoted(name) +
                                 " is not a file name");
      }
      const auto shard_name = shard.get<std::string>();
      const std::filesystem::path rel(shard_name);
      if (shard_name.empty() || rel.is_absolute() ||
          std::any_of(rel.begin(), rel.end(), [](const auto& part) { return part == ".."; })) {
        throw std::runtime_error(index_path.string() + ": weight_map entry for tensor " + quoted(name) +
                                 " names a file outside the folder: " + quoted(shard_name));
      }
      auto it = shard_index.find(shard_name);
      if (it == shard_index.end()) {
        ckpt.files_.push_back(std::make_shared<SafetensorsFile>(folder / rel));
        it = shard_index.emplace(shard_name, ckpt.files_.size() - 1).first;
      }
      if (!ckpt.files_[it->second]->contains(name)) {
        throw std::runtime_error(index_path.string() + ": tensor " + quoted(name) + " is listed in the index but " +
                                 ckpt.files_[it->second]->path().string() + " does not hold it");
      }
      ckpt.where_.emplace(name, it->second);
    }
    ckpt.description_ = folder.string() + " (" + std::to_string(ckpt.files_.size()) + " shards)";
    return ckpt;
  }
  const auto single = folder / "model.safetensors";
  if (std::filesystem::exists(single, ec)) return open_file(single);
  const auto found = safetensors_files_in(folder);
  if (found.size() == 1) return open_file(found[0]);
  if (found.empty()) {
    throw std::runtime_error(folder.string() +
                             ": no checkpoint (neither model.safetensors.index.json, model.safetensors nor any "
                             "*.safetensors file)");
  }
  std::string list;
  for (const auto& f : found) list += (list.empty() ? "" : ", ") + f.filename().string();
  throw std::runtime_error(folder.string() + ": no model.safetensors or index, and several *.safetensors files (" +
                           list + "); cannot tell which is the checkpoint");
}

bool Checkpoint::contains(const std::string& name) const { return where_.count(name) != 0; }

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const std::filesystem::path& Checkpoint::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) {
    throw std::runtime_error(description_ + ": tensor " + quoted(name) + ": no such tensor in the checkpoint");
  }
  return files_[it->second]->path();
}

const TensorInfo& Checkpoint::info(const std::string& name) const {
  file_of(name);  // throws if absent
  return files_[where_.at(name)]->info(name);
}

at::Tensor Checkpoint::load(const std::string& name) const {
  file_of(name);
  return files_[where_.at(name)]->load(name);
}

std::string Checkpoint::describe() const { return description_; }

// ---------------------------------------------------------------------------
// Writer

namespace {

// 64-bit FNV-1a over 8-byte words in 4 interleaved lanes (four independent
// multiply chains: several GB/s), fed in pieces.
class DataChecksum {
 public:
  void update(const uint8_t* p, uint64_t n) {
    size_ += n;
    while (n > 0) {
      if (fill_ == 0 && n >= 32) {
        mix(p);
        p += 32;
        n -= 32;
        continue;
      }
      const uint64_t take = std::min<uint64_t>(32 - fill_, n);
      std::memcpy(buffer_ + fill_, p, take);
      fill_ += take;
      p += take;
      n -= take;
      if (fill_ == 32) {
        mix(buffer_);
        fill_ = 0;
      }
    }
  }
  std::string finish() const {
    uint64_t h = kBasis;
    for (uint64_t i = 0; i < fill_; ++i) h = (h ^ buffer_[i]) * kPrime;  // the tail, byte by byte
    for (uint64_t l : lane_) {
      for (int b = 0; b < 8; ++b) h = (h ^ ((l >> (8 * b)) & 0xff)) * kPrime;
    }
    h = (h ^ size_) * kPrime;
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return std::string("fnv1a64x4:") + buf;
  }

 private:
  static constexpr uint64_t kPrime = 0x100000001b3ULL;
  static constexpr uint64_t kBasis = 0xcbf29ce484222325ULL;
  void mix(const uint8_t* p) {
    for (int l = 0; l < 4; ++l) {
      uint64_t w;
      std::memcpy(&w, p + 8 * l, 8);  // little-endian host (checked on open and save)
      lane_[l] = (lane_[l] ^ w) * kPrime;
    }
  }
  uint64_t lane_[4] = {kBasis, kBasis ^ 1, kBasis ^ 2, kBasis ^ 3};
  uint8_t buffer_[32] = {};
  uint64_t fill_ = 0;
  uint64_t size_ = 0;
};

}  // namespace

std::string data_checksum(const uint8_t* data, uint64_t size) {
  DataChecksum c;
  c.update(data, size);
  return c.finish();
}

void SafetensorsFile::verify_data_checksum() const {
  const auto it = impl_->metadata.find(kDataChecksumKey);
  if (it == impl_->metadata.end()) impl_->fail(std::string("no data checksum (metadata \"") + kDataChecksumKey + "\")");
  const std::string actual = data_checksum(impl_->data, impl_->data_size);
  if (it->second != actual) {
    impl_->fail("data checksum mismatch (the file says " + it->second + ", the bytes give " + actual +
                "): the file is damaged");
  }
}

namespace {

void save_impl(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
               const std::map<std::string, std::string>& given_metadata, bool checksum) {
  if (!host_is_little_endian()) throw std::runtime_error(path.string() + ": big-endian hosts are not supported");
  struct Item {
    const std::string* name;
    at::Tensor data;  // contiguous CPU
    std::string dtype;
    size_t itemsize;
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  std::set<std::string> seen;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == "__metadata__") {
      throw std::invalid_argument(path.string() + ": invalid tensor name " + quoted(name));
    }
    if (!seen.insert(name).second) {
      throw std::invalid_argument(path.string() + ": tensor " + quoted(name) + " given twice");
    }
    if (!tensor.defined()) throw std::invalid_argument(path.string() + ": tensor " + quoted(name) + " is undefined");
    std::string dtype;
    try {
      dtype = safetensors_dtype(tensor.scalar_type());
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(path.string() + ": tensor " + quoted(name) + ": " + e.what());
    }
    if (tensor.layout() != at::kStrided) {
      throw std::invalid_argument(path.string() + ": tensor " + quoted(name) + " is not a dense (strided) tensor");
    }
    // resolve_neg(): a negated view shares its storage; write the values it shows.
    at::Tensor cpu = tensor.to(at::kCPU).resolve_neg().contiguous();
    items.push_back({&name, cpu, dtype, static_cast<size_t>(cpu.element_size())});
  }
  // Data laid out as the Python library does: by dtype in its order
  // (I64, F64, F32, I32, BF16, F16, I16, I8, U8, BOOL), then by name, so
  // every tensor starts at a multiple of its item size.
  auto rank = [](const std::string& dtype) {
    static const char* const order[] = {"BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"};
    for (int i = 0; i < 10; ++i) {
      if (dtype == order[i]) return i;
    }
    return -1;
  };
  std::sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    const int ra = rank(a.dtype), rb = rank(b.dtype);
    return ra != rb ? ra > rb : *a.name < *b.name;
  });

  // Header: "__metadata__" first, then tensors by name. Written member by
  // member: an ordered_json object finds keys by a linear search, which made
  // headers of many tensors quadratic.
  std::map<std::string, std::string> metadata = given_metadata;
  if (checksum) {
    // The data section is the tensors' bytes in the order written below.
    DataChecksum sum;
    for (const auto& item : items) {
      sum.update(static_cast<const uint8_t*>(item.data.data_ptr()),
                 static_cast<uint64_t>(item.data.numel()) * item.itemsize);
    }
    metadata[kDataChecksumKey] = sum.finish();
  }
  std::vector<std::pair<const std::string*, nlohmann::ordered_json>> entries;
  entries.reserve(items.size());
  uint64_t offset = 0;
  for (const auto& item : items) {
    const uint64_t nbytes = static_cast<uint64_t>(item.data.numel()) * item.itemsize;
    nlohmann::ordered_json entry;  // dtype, shape, data_offsets in this order, as the Python library writes
    entry["dtype"] = item.dtype;
    entry["shape"] = item.data.sizes().vec();
    entry["data_offsets"] = {offset, offset + nbytes};
    entries.emplace_back(item.name, std::move(entry));
    offset += nbytes;
  }
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return *a.first < *b.first; });
  std::string text = "{";
  try {
    if (!metadata.empty()) {
      nlohmann::ordered_json meta = nlohmann::ordered_json::object();
      for (const auto& [k, v] : metadata) meta[k] = v;
      text += "\"__metadata__\":" + meta.dump();
    }
    for (const auto& [name, entry] : entries) {
      if (text.size() > 1) text += ',';
      text += nlohmann::json(*name).dump() + ":" + entry.dump();
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(path.string() + ": tensor names and metadata must be valid UTF-8: " + e.what());
  }
  text += '}';
  text.append((8 - text.size() % 8) % 8, ' ');  // the Python library pads to 8 bytes with spaces

  uint8_t prefix[8];
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(n >> (8 * i));

  detail::AtomicFile file(path);  // removes the temporary file if anything below throws
  file.write(prefix, sizeof prefix);
  file.write(text.data(), text.size());
  for (const auto& item : items) {
    const size_t nbytes = static_cast<size_t>(item.data.numel()) * item.itemsize;
    if (nbytes > 0) file.write(item.data.data_ptr(), nbytes);
  }
  file.commit();
}

}  // namespace

void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  save_impl(path, tensors, metadata, false);
}

void save_safetensors_checked(const std::filesystem::path& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  if (metadata.count(kDataChecksumKey)) {
    throw std::invalid_argument(path.string() + ": metadata key " + quoted(kDataChecksumKey) + " is reserved");
  }
  save_impl(path, tensors, metadata, true);
}

}  // namespace cur4llm::io
