// Cache keys: FNV-1a against published test vectors, hashes that move with
// every field, mismatch reports, and model fingerprints of scratch copies of a
// fixture whose checkpoint and config are rewritten.
#include "test_paths.h"

#include <cur4llm/io/cache.h>
#include <cur4llm/io/files.h>

#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <string>

using namespace cur4llm;

namespace {

io::CacheKey base_key() {
  return {"sensitivity",
          {{"model", "llama_gqa@0123"}, {"scaling", "abs_mean"}, {"alpha", "0.5"}, {"n_samples", "32"},
           {"dataset", "wikitext2"}, {"method", "cur"}}};
}

bool is_hex16(const std::string& s) {
  return s.size() == 16 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
}

// A scratch copy of a fixture model, removed with io::remove_tree on destruction.
struct ScratchModel {
  std::filesystem::path dir;
  explicit ScratchModel(const std::string& fixture) {
    dir = std::filesystem::temp_directory_path() / ("cur4llm_test_io_cache_" + fixture);
    io::remove_tree(dir);
    std::filesystem::copy(test::fixture_dir() / "models" / fixture, dir);
  }
  ~ScratchModel() { io::remove_tree(dir); }
};

void bump_mtime(const std::filesystem::path& file, int seconds) {
  std::filesystem::last_write_time(file, std::filesystem::last_write_time(file) + std::chrono::seconds(seconds));
}

}  // namespace

TEST_CASE("fnv1a64 matches the published FNV-1a 64 test vectors", "[io][cache][unit]") {
  CHECK(io::fnv1a64("") == 0xcbf29ce484222325ULL);
  CHECK(io::fnv1a64("a") == 0xaf63dc4c8601ec8cULL);
  CHECK(io::fnv1a64("foobar") == 0x85944171f73967e8ULL);
  // Continuing from a seed is hashing the concatenation.
  CHECK(io::fnv1a64("bar", io::fnv1a64("foo")) == io::fnv1a64("foobar"));
  CHECK(io::hex64(0xaf63dc4c8601ec8cULL) == "af63dc4c8601ec8c");
  CHECK(io::hex64(0x1ULL) == "0000000000000001");
}

TEST_CASE("cache key hash: stable for equal fields, different when any field changes", "[io][cache][unit]") {
  const auto key = base_key();
  const auto h = key.hash();
  CHECK(is_hex16(h));
  CHECK(key.hash() == h);

  // The same fields given in another order.
  io::CacheKey same;
  same.kind = "sensitivity";
  for (const char* f : {"method", "dataset", "n_samples", "alpha", "scaling", "model"}) same.fields[f] = key.fields.at(f);
  CHECK(same.hash() == h);

  std::set<std::string> seen{h};
  auto differs = [&](const io::CacheKey& k, const std::string& what) {
    INFO(what);
    const auto kh = k.hash();
    CHECK(is_hex16(kh));
    CHECK(seen.insert(kh).second);  // different from the base and from every other variant
  };
  for (const auto& [field, value] : key.fields) {
    auto k = key;
    k.fields[field] = value + "x";
    differs(k, field + " changed");
    k = key;
    k.fields.erase(field);
    differs(k, field + " removed");
    k = key;
    k.fields.erase(field);
    k.fields[field + "_"] = value;
    differs(k, field + " renamed");
  }
  auto k = key;
  k.kind = "stats";
  differs(k, "kind");
  k = key;
  k.fields["extra"] = "";
  differs(k, "an empty extra field");
  k = key;
  k.fields["alpha"] = "0.50";
  differs(k, "alpha spelled differently");

  // Field boundaries are part of the hash.
  io::CacheKey a{"calib", {{"a", "bc"}}}, b{"calib", {{"ab", "c"}}};
  CHECK(a.hash() != b.hash());
  io::CacheKey c{"calib", {{"a", "b"}, {"c", "d"}}}, d{"calib", {{"a", "bc"}, {"", "d"}}};
  CHECK(c.hash() != d.hash());
  io::CacheKey e{"calib", {}}, f{"cali", {{"b", ""}}};
  CHECK(e.hash() != f.hash());
}

TEST_CASE("cache key file name, metadata and mismatch reports", "[io][cache][unit]") {
  const auto key = base_key();
  const auto name = key.file_name("json");
  CHECK(name == "sensitivity-" + key.hash() + ".json");

  const auto meta = key.as_metadata();
  CHECK(meta.size() == key.fields.size() + 1);
  CHECK(meta.at("key.kind") == "sensitivity");
  CHECK(meta.at("key.alpha") == "0.5");
  CHECK(meta.at("key.model") == "llama_gqa@0123");

  CHECK(key.mismatch(meta).empty());
  // Other metadata of the file (counts, format) is not part of the key.
  auto with_other = meta;
  with_other["counts.lm_head"] = "4 64";
  with_other["format"] = "cur4llm";
  CHECK(key.mismatch(with_other).empty());

  auto missing = meta;
  missing.erase("key.dataset");
  const auto m1 = key.mismatch(missing);
  CHECK(m1.find("key.dataset") != std::string::npos);
  CHECK(m1.find("missing") != std::string::npos);

  auto different = meta;
  different["key.n_samples"] = "64";
  const auto m2 = key.mismatch(different);
  CHECK(m2.find("key.n_samples") != std::string::npos);
  CHECK(m2.find("64") != std::string::npos);
  CHECK(m2.find("32") != std::string::npos);

  auto other_kind = meta;
  other_kind["key.kind"] = "stats";
  CHECK(key.mismatch(other_kind).find("key.kind") != std::string::npos);

  auto unexpected = meta;
  unexpected["key.seed"] = "3";
  const auto m3 = key.mismatch(unexpected);
  CHECK(m3.find("unexpected") != std::string::npos);
  CHECK(m3.find("key.seed") != std::string::npos);

  CHECK_FALSE(key.mismatch({}).empty());
}

TEST_CASE("model fingerprint changes when a checkpoint file or config.json is rewritten", "[io][cache]") {
  SECTION("single file") {
    ScratchModel m("llama_gqa");
    const auto fp = io::model_fingerprint(m.dir);
    CHECK(is_hex16(fp));
    CHECK(io::model_fingerprint(m.dir) == fp);

    // A file that is not a checkpoint does not count.
    bump_mtime(m.dir / "generation_config.json", 10);
    CHECK(io::model_fingerprint(m.dir) == fp);

    // The weights rewritten with the same bytes: only the modification time differs.
    const auto weights = m.dir / "model.safetensors";
    const std::string bytes = io::read_file(weights);
    { std::ofstream(weights, std::ios::binary | std::ios::trunc) << bytes; }
    bump_mtime(weights, 10);
    const auto fp2 = io::model_fingerprint(m.dir);
    CHECK(fp2 != fp);
    CHECK(io::model_fingerprint(m.dir) == fp2);

    // config.json's content counts (a different dtype, say), even with the same mtime.
    const auto config = m.dir / "config.json";
    const auto t = std::filesystem::last_write_time(config);
    std::string text = io::read_file(config);
    { std::ofstream(config, std::ios::binary | std::ios::trunc) << text << "\n"; }
    std::filesystem::last_write_time(config, t);
    const auto fp3 = io::model_fingerprint(m.dir);
    CHECK(fp3 != fp2);
    CHECK(fp3 != fp);

    // A new checkpoint file counts.
    { std::ofstream(m.dir / "extra.safetensors", std::ios::binary) << "x"; }
    CHECK(io::model_fingerprint(m.dir) != fp3);
  }
  SECTION("sharded checkpoint: each shard and the index count") {
    ScratchModel m("llama_gqa_sharded");
    const auto fp = io::model_fingerprint(m.dir);
    bump_mtime(m.dir / "model-00004-of-00006.safetensors", 5);
    const auto fp2 = io::model_fingerprint(m.dir);
    CHECK(fp2 != fp);
    bump_mtime(m.dir / "model.safetensors.index.json", 5);
    CHECK(io::model_fingerprint(m.dir) != fp2);
  }
  SECTION("two copies with the same files and times have the same fingerprint; no config.json is an error") {
    ScratchModel a("opt_pre");
    ScratchModel b("opt_pre_fp16");
    // opt_pre_fp16 differs in config and weights from opt_pre.
    CHECK(io::model_fingerprint(a.dir) != io::model_fingerprint(b.dir));
    io::remove_tree(b.dir);
    std::filesystem::copy(a.dir, b.dir);
    for (const auto& entry : std::filesystem::directory_iterator(a.dir)) {
      std::filesystem::last_write_time(b.dir / entry.path().filename(), std::filesystem::last_write_time(entry.path()));
    }
    CHECK(io::model_fingerprint(a.dir) == io::model_fingerprint(b.dir));
    std::filesystem::remove(b.dir / "config.json");
    CHECK_THROWS_AS(io::model_fingerprint(b.dir), std::runtime_error);
  }
}
