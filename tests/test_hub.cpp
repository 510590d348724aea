// Downloads from the Hugging Face Hub, against a fake Hub (tests/support/fake_hub.py)
// on 127.0.0.1 that serves tests/data/models/tiny-shakespeare-opt as "acme/tiny".
#include <cur4llm/io/files.h>
#include <cur4llm/io/hub.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/model/causal_lm.h>

#include "test_helpers.h"

#include <nlohmann/json.hpp>

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <thread>

extern char** environ;

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using cur4llm::io::HubError;
using cur4llm::io::HubOptions;
using cur4llm::test::model_dir;
using cur4llm::test::TempDir;

using cur4llm::test::ScopedEnv;

namespace {

const char* const kRepo = "acme/tiny";
const char* const kModel = "tiny-shakespeare-opt";


template <class E, class F>
std::string message_of(F&& fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  }
  FAIL("no exception was thrown");
  return {};
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

bool python_available() { return std::system("python3 -c 'import http.server' > /dev/null 2>&1") == 0; }

fs::path fake_hub_script() { return cur4llm::test::fixture_dir().parent_path() / "support" / "fake_hub.py"; }

// The fake Hub as a child process: started on a free port of 127.0.0.1, stopped
// by the destructor (and by itself when this process dies, or after a minute).
class FakeHub {
 public:
  FakeHub(const fs::path& work, const std::vector<std::string>& extra, const fs::path& model = model_dir(kModel),
          const std::string& repo = kRepo)
      : log_(work / "requests.jsonl") {
    const fs::path port_file = work / "port";
    std::vector<std::string> args = {"python3", fake_hub_script().string(), "--model", model.string(), "--repo", repo,
                                     "--port-file", port_file.string(), "--log", log_.string(), "--lifetime", "60"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    REQUIRE(::posix_spawnp(&pid_, "python3", nullptr, nullptr, argv.data(), environ) == 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!fs::exists(port_file)) {
      int status = 0;
      REQUIRE(::waitpid(pid_, &status, WNOHANG) == 0);  // the server must not have exited
      REQUIRE(std::chrono::steady_clock::now() < deadline);
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    endpoint_ = "http://127.0.0.1:" + slurp(port_file);
  }
  ~FakeHub() {
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  FakeHub(const FakeHub&) = delete;
  FakeHub& operator=(const FakeHub&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  /// Every request served so far (method, path, range, authorization).
  std::vector<nlohmann::json> requests() const {
    std::vector<nlohmann::json> out;
    std::ifstream in(log_);
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    }
    return out;
  }

 private:
  fs::path log_;
  pid_t pid_ = -1;
  std::string endpoint_;
};

// A temporary cache and the options that download into it from `hub`.
struct Setup {
  TempDir dir{"cur4llm_hub"};
  // curl honours proxy variables: the fake Hub must be reached directly.
  ScopedEnv no_proxy{"no_proxy", std::string("127.0.0.1")};
  ScopedEnv no_proxy_upper{"NO_PROXY", std::string("127.0.0.1")};
  fs::path cache = dir / "hub";

  HubOptions options(const FakeHub& hub) const {
    HubOptions o;
    o.endpoint = hub.endpoint();
    o.cache_dir = cache;
    o.show_progress = false;
    return o;
  }
};

#define CUR4LLM_REQUIRE_FAKE_HUB()                                                     \
  if (!cur4llm::io::hub_download_supported()) {                                        \
    WARN("SKIPPED: this build has no Hub download support (built without libcurl)");   \
    return;                                                                            \
  }                                                                                    \
  if (!python_available()) {                                                           \
    WARN("SKIPPED: python3 is not available to run the fake Hub");                     \
    return;                                                                            \
  }

std::vector<std::string> served_files() {
  return {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"};
}

std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

size_t count_if_path(const std::vector<nlohmann::json>& requests, const std::string& part, const char* method) {
  return static_cast<size_t>(std::count_if(requests.begin(), requests.end(), [&](const nlohmann::json& r) {
    return r["method"] == method && r["path"].get<std::string>().find(part) != std::string::npos;
  }));
}

}  // namespace

TEST_CASE("hub: options come from HF_ENDPOINT, HF_TOKEN, the token file and HF_HUB_OFFLINE", "[unit][io][hub]") {
  TempDir dir;
  ScopedEnv xdg("XDG_CACHE_HOME", std::nullopt);
  ScopedEnv legacy("HUGGING_FACE_HUB_TOKEN", std::nullopt);
  ScopedEnv transformers_offline("TRANSFORMERS_OFFLINE", std::nullopt);
  {
    ScopedEnv e("HF_ENDPOINT", std::string("http://mirror.example/"));
    ScopedEnv t("HF_TOKEN", std::string("hf_from_env"));
    ScopedEnv o("HF_HUB_OFFLINE", std::string("1"));
    const auto options = HubOptions::from_environment();
    CHECK(cur4llm::io::hub_endpoint(options) == "http://mirror.example");
    CHECK(options.token == "hf_from_env");
    CHECK(options.offline);
    CHECK(options.revision == "main");
  }
  cur4llm::io::write_file_atomic(dir / "token_path", "hf_from_token_path\n");
  fs::create_directories(dir / "hf_home");
  cur4llm::io::write_file_atomic(dir / "hf_home" / "token", "hf_from_hf_home\n");
  fs::create_directories(dir / "home" / ".cache" / "huggingface");
  cur4llm::io::write_file_atomic(dir / "home" / ".cache" / "huggingface" / "token", "hf_from_home");
  ScopedEnv e("HF_ENDPOINT", std::nullopt);
  ScopedEnv t("HF_TOKEN", std::nullopt);
  ScopedEnv home("HOME", (dir / "home").string());
  {
    ScopedEnv p("HF_TOKEN_PATH", (dir / "token_path").string());
    ScopedEnv h("HF_HOME", (dir / "hf_home").string());
    ScopedEnv o("HF_HUB_OFFLINE", std::string("0"));
    const auto options = HubOptions::from_environment();
    CHECK(options.token == "hf_from_token_path");
    CHECK_FALSE(options.offline);
    CHECK(cur4llm::io::hub_endpoint(options) == "https://huggingface.co");
  }
  {
    ScopedEnv p("HF_TOKEN_PATH", std::nullopt);
    ScopedEnv h("HF_HOME", (dir / "hf_home").string());
    CHECK(HubOptions::from_environment().token == "hf_from_hf_home");
  }
  {
    ScopedEnv p("HF_TOKEN_PATH", std::nullopt);
    ScopedEnv h("HF_HOME", std::nullopt);
    ScopedEnv o("HF_HUB_OFFLINE", std::nullopt);
    const auto options = HubOptions::from_environment();
    CHECK(options.token == "hf_from_home");
    CHECK_FALSE(options.offline);
  }
}

TEST_CASE("hub: malformed ids and revisions are std::invalid_argument", "[unit][io][hub]") {
  HubOptions o;
  o.offline = true;
  CHECK_THROWS_AS(cur4llm::io::download_model("acme/../etc", o), std::invalid_argument);
  CHECK_THROWS_AS(cur4llm::io::download_model("a/b/c", o), std::invalid_argument);
  for (const char* revision : {"", "../main", "refs/../../x", "/abs", "a\\b"}) {
    o.revision = revision;
    CHECK_THROWS_AS(cur4llm::io::download_model("acme/tiny", o), std::invalid_argument);
  }
}

TEST_CASE("hub: a build without libcurl says so when asked to download", "[unit][io][hub]") {
  if (cur4llm::io::hub_download_supported()) {
    WARN("SKIPPED: this build has Hub download support");
    return;
  }
  TempDir dir;
  HubOptions o;
  o.cache_dir = dir / "hub";
  CHECK_THAT(message_of<std::runtime_error>([&] { cur4llm::io::download_model("acme/tiny", o); }),
             Contains("built without Hub download support"));
}

TEST_CASE("hub: a download fills the cache as huggingface_hub does and loads like the folder", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {});
  const auto options = s.options(hub);
  const fs::path snapshot = cur4llm::io::download_model(kRepo, options);

  const fs::path repo = s.cache / "models--acme--tiny";
  const std::string commit = slurp(repo / "refs" / "main");
  CHECK(commit.size() == 40);
  CHECK(snapshot == repo / "snapshots" / commit);
  CHECK(listing(snapshot) == served_files());
  for (const auto& name : served_files()) {
    INFO(name);
    const fs::path link = snapshot / name;
    REQUIRE(fs::is_symlink(link));
    const fs::path target = fs::read_symlink(link);
    CHECK(target.is_relative());
    CHECK(target.parent_path() == fs::path("../../blobs"));
    CHECK(slurp(link) == slurp(model_dir(kModel) / name));
  }
  // The LFS file's blob is named by its sha256 (64 hex digits), the others by their git sha1 (40).
  CHECK(fs::read_symlink(snapshot / "model.safetensors").filename().string().size() == 64);
  CHECK(fs::read_symlink(snapshot / "config.json").filename().string().size() == 40);
  for (const auto& e : fs::directory_iterator(repo / "blobs")) {
    CHECK(e.path().extension() != ".incomplete");
  }

  // The model loads from the snapshot, with the folder's logits.
  const auto ids = at::tensor(std::vector<int64_t>{5, 17, 3, 42, 8, 11}, at::kLong).unsqueeze(0);
  auto from_hub = cur4llm::model::CausalLM::load(snapshot, {});
  auto from_folder = cur4llm::model::CausalLM::load(model_dir(kModel), {});
  CHECK(at::equal(from_hub->forward(ids), from_folder->forward(ids)));

  // A second call, and the cache-only look-up, find it without a request.
  const size_t served = hub.requests().size();
  CHECK(cur4llm::io::download_model(kRepo, options) == snapshot);
  CHECK(cur4llm::io::cached_model(kRepo, options) == snapshot);
  ScopedEnv cache_env("HF_HUB_CACHE", s.cache.string());
  CHECK(cur4llm::io::resolve_model_id(kRepo) == snapshot);
  CHECK(cur4llm::io::resolve_model_id(kRepo, options) == snapshot);
  HubOptions by_commit = options;
  by_commit.revision = commit;
  CHECK(cur4llm::io::download_model(kRepo, by_commit) == snapshot);
  CHECK(hub.requests().size() == served);
}

TEST_CASE("hub: a sharded model comes as its index and shards, and nothing else", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  const fs::path folder = model_dir("llama_gqa_sharded");  // also holds reference.safetensors, no model file
  FakeHub hub(s.dir.path, {}, folder, "acme/sharded");
  const fs::path snapshot = cur4llm::io::download_model("acme/sharded", s.options(hub));
  std::vector<std::string> wanted = {"config.json", "generation_config.json", "model.safetensors.index.json"};
  for (int i = 1; i <= 6; ++i) wanted.push_back("model-0000" + std::to_string(i) + "-of-00006.safetensors");
  std::sort(wanted.begin(), wanted.end());
  CHECK(listing(snapshot) == wanted);
  for (const auto& name : wanted) CHECK(slurp(snapshot / name) == slurp(folder / name));
  CHECK(count_if_path(hub.requests(), "reference.safetensors", "HEAD") == 0);
  const auto ids = at::tensor(std::vector<int64_t>{1, 7, 3, 12}, at::kLong).unsqueeze(0);
  auto from_hub = cur4llm::model::CausalLM::load(snapshot, {});
  auto from_folder = cur4llm::model::CausalLM::load(folder, {});
  CHECK(at::equal(from_hub->forward(ids), from_folder->forward(ids)));
  CHECK(cur4llm::io::cached_model("acme/sharded", s.options(hub)) == snapshot);
}

TEST_CASE("hub: a repository with only PyTorch .bin weights is refused without fetching them", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  const fs::path folder = s.dir / "bin_only";
  fs::create_directories(folder);
  cur4llm::io::write_file_atomic(folder / "config.json", slurp(model_dir(kModel) / "config.json"));
  cur4llm::io::write_file_atomic(folder / "pytorch_model.bin", "not really a pickle");
  FakeHub hub(s.dir.path, {}, folder, "acme/old");
  const std::string message =
      message_of<HubError>([&] { cur4llm::io::download_model("acme/old", s.options(hub)); });
  CHECK_THAT(message, Contains("acme/old") && Contains("model.safetensors") && Contains(".bin") &&
                          Contains("--revision"));
  CHECK(count_if_path(hub.requests(), "pytorch_model.bin", "GET") == 0);
  CHECK(count_if_path(hub.requests(), "pytorch_model.bin", "HEAD") == 0);
  CHECK(count_if_path(hub.requests(), "/resolve/", "GET") == 0);  // refused before any download
  CHECK_FALSE(fs::exists(s.cache / "models--acme--old" / "snapshots"));
}

TEST_CASE("hub: without the listing API the known file names are tried, 404 meaning absent", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {"--no-api"});
  const fs::path snapshot = cur4llm::io::download_model(kRepo, s.options(hub));
  CHECK(listing(snapshot) == served_files());
  for (const auto& name : served_files()) CHECK(slurp(snapshot / name) == slurp(model_dir(kModel) / name));
  const auto requests = hub.requests();
  CHECK(count_if_path(requests, "/resolve/main/config.json", "HEAD") == 1);
  CHECK(count_if_path(requests, "/tokenizer.model", "HEAD") == 1);  // tried, absent
  CHECK(count_if_path(requests, "/merges.txt", "HEAD") == 1);
  CHECK(count_if_path(requests, "model.safetensors.index.json", "HEAD") == 0);  // model.safetensors exists
  CHECK(count_if_path(requests, ".bin", "HEAD") == 0);
}

TEST_CASE("hub: a connection dropped mid-file is resumed with a Range request", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {"--drop-first", "model.safetensors"});
  const fs::path snapshot = cur4llm::io::download_model(kRepo, s.options(hub));
  const std::string original = slurp(model_dir(kModel) / "model.safetensors");
  CHECK(slurp(snapshot / "model.safetensors") == original);

  std::vector<nlohmann::json> blob_gets;
  for (const auto& r : hub.requests()) {
    if (r["method"] == "GET" && r["path"].get<std::string>().rfind("/cdn/", 0) == 0) blob_gets.push_back(r);
  }
  REQUIRE(blob_gets.size() == 2);
  CHECK(blob_gets[0]["range"].is_null());
  // The server sent half the file before cutting the connection.
  CHECK(blob_gets[1]["range"] == "bytes=" + std::to_string(original.size() / 2) + "-");
}

TEST_CASE("hub: a download that keeps breaking fails, keeps its part and resumes on the next run", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  const auto options_for = [&](const FakeHub& hub) { return s.options(hub); };
  const fs::path repo = s.cache / "models--acme--tiny";
  uintmax_t kept = 0;
  {
    TempDir work;
    FakeHub breaking(work.path, {"--drop-always", "model.safetensors"});
    const std::string message =
        message_of<HubError>([&] { cur4llm::io::download_model(kRepo, options_for(breaking)); });
    CHECK_THAT(message, Contains("model.safetensors") && Contains(kRepo) && Contains("broke off") &&
                            Contains("run again"));
    for (const auto& e : fs::recursive_directory_iterator(repo / "snapshots")) {
      CHECK(e.path().filename() != "model.safetensors");
    }
    CHECK_FALSE(fs::exists(repo / "refs" / "main"));
    for (const auto& e : fs::directory_iterator(repo / "blobs")) {
      if (e.path().extension() == ".incomplete") kept = fs::file_size(e.path());
    }
    // Each of the 5 attempts got half of what was left: 31/32 of the file.
    CHECK(kept > fs::file_size(model_dir(kModel) / "model.safetensors") / 2);
  }
  FakeHub hub(s.dir.path, {});
  const fs::path snapshot = cur4llm::io::download_model(kRepo, options_for(hub));
  CHECK(slurp(snapshot / "model.safetensors") == slurp(model_dir(kModel) / "model.safetensors"));
  std::vector<nlohmann::json> blob_gets;
  for (const auto& r : hub.requests()) {
    if (r["method"] == "GET" && r["path"].get<std::string>().rfind("/cdn/", 0) == 0) blob_gets.push_back(r);
  }
  REQUIRE(blob_gets.size() == 1);
  CHECK(blob_gets[0]["range"] == "bytes=" + std::to_string(kept) + "-");
  CHECK(hub.requests().size() < 2 * served_files().size());  // the small files were not fetched again
}

TEST_CASE("hub: a partial blob left by an earlier run is resumed", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {});
  // The blob name (the sha256 the fake Hub announces) from a first download elsewhere.
  auto first = s.options(hub);
  first.cache_dir = s.dir / "first";
  const std::string blob_name =
      fs::read_symlink(cur4llm::io::download_model(kRepo, first) / "model.safetensors").filename().string();

  const std::string original = slurp(model_dir(kModel) / "model.safetensors");
  const fs::path blobs = s.cache / "models--acme--tiny" / "blobs";
  fs::create_directories(blobs);
  cur4llm::io::write_file_atomic(blobs / (blob_name + ".incomplete"), original.substr(0, 1000));
  const size_t before = hub.requests().size();
  const fs::path snapshot = cur4llm::io::download_model(kRepo, s.options(hub));
  CHECK(slurp(snapshot / "model.safetensors") == original);
  CHECK_FALSE(fs::exists(blobs / (blob_name + ".incomplete")));
  const auto requests = hub.requests();
  std::vector<nlohmann::json> blob_gets;
  for (size_t i = before; i < requests.size(); ++i) {
    if (requests[i]["method"] == "GET" && requests[i]["path"].get<std::string>().rfind("/cdn/", 0) == 0) {
      blob_gets.push_back(requests[i]);
    }
  }
  REQUIRE(blob_gets.size() == 1);
  CHECK(blob_gets[0]["range"] == "bytes=1000-");
}

TEST_CASE("hub: a wrong checksum is refused and nothing reaches snapshots/", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {"--corrupt", "model.safetensors"});
  const auto options = s.options(hub);
  const std::string message = message_of<HubError>([&] { cur4llm::io::download_model(kRepo, options); });
  CHECK_THAT(message, Contains("model.safetensors") && Contains("checksum") && Contains(kRepo));

  const fs::path repo = s.cache / "models--acme--tiny";
  for (const auto& e : fs::recursive_directory_iterator(repo / "snapshots")) {
    CHECK(e.path().filename() != "model.safetensors");
  }
  for (const auto& e : fs::directory_iterator(repo / "blobs")) {
    INFO(e.path().string());
    CHECK(e.path().extension() != ".incomplete");
    CHECK(e.path().filename().string().size() == 40);  // only the small files' blobs
  }
  CHECK_FALSE(fs::exists(repo / "refs" / "main"));
  CHECK(cur4llm::io::cached_model(kRepo, options).empty());
}

TEST_CASE("hub: the token is sent as a Bearer header and 401 says to set HF_TOKEN", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {"--token", "hf_secret_123", "--gated"});
  auto options = s.options(hub);

  const std::string anonymous = message_of<HubError>([&] { cur4llm::io::download_model(kRepo, options); });
  CHECK_THAT(anonymous, Contains("config.json") && Contains(kRepo) && Contains("HTTP 401") && Contains("HF_TOKEN") &&
                            Contains("gated"));

  {
    ScopedEnv cache_env("HF_HUB_CACHE", s.cache.string());
    CHECK_THAT(message_of<std::invalid_argument>([&] { cur4llm::io::resolve_model_id(kRepo, options); }),
               Contains("no folder") && Contains("HTTP 401") && Contains("HF_TOKEN"));
  }

  options.token = "hf_wrong_456";
  const std::string refused = message_of<HubError>([&] { cur4llm::io::download_model(kRepo, options); });
  CHECK_THAT(refused, Contains("HTTP 401") && Contains("HF_TOKEN"));
  CHECK(refused.find("hf_wrong_456") == std::string::npos);

  options.token = "hf_secret_123";
  const size_t before = hub.requests().size();
  const fs::path snapshot = cur4llm::io::download_model(kRepo, options);
  CHECK(slurp(snapshot / "model.safetensors") == slurp(model_dir(kModel) / "model.safetensors"));
  const auto requests = hub.requests();
  size_t hub_requests = 0;
  for (size_t i = before; i < requests.size(); ++i) {
    const std::string path = requests[i]["path"];
    if (path.find("/resolve/") == std::string::npos) continue;
    ++hub_requests;
    CHECK(requests[i]["authorization"] == "Bearer hf_secret_123");
  }
  CHECK(hub_requests >= served_files().size());
  // The LFS bytes come from another origin (the CDN): it never sees the token.
  const size_t blob_gets = count_if_path(requests, "/cdn/", "GET");
  CHECK(blob_gets == 1);
  for (const auto& r : requests) {
    if (r["path"].get<std::string>().rfind("/cdn/", 0) == 0) CHECK(r["authorization"].is_null());
  }
}

TEST_CASE("hub: 404 names the repository and the revision", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {});
  auto options = s.options(hub);
  const std::string no_repo = message_of<HubError>([&] { cur4llm::io::download_model("acme/absent", options); });
  CHECK_THAT(no_repo, Contains("acme/absent") && Contains("revision main") && Contains("HTTP 404"));

  options.revision = "v9";
  const std::string no_revision = message_of<HubError>([&] { cur4llm::io::download_model(kRepo, options); });
  CHECK_THAT(no_revision, Contains(kRepo) && Contains("v9") && Contains("HTTP 404"));

  // Through resolve_model_id: a model that exists nowhere is a user error.
  options.revision = "main";
  ScopedEnv cache_env("HF_HUB_CACHE", s.cache.string());
  const std::string resolved =
      message_of<std::invalid_argument>([&] { cur4llm::io::resolve_model_id("acme/absent", options); });
  CHECK_THAT(resolved, Contains("acme/absent") && Contains("HTTP 404"));
}

TEST_CASE("hub: a mirror without the listing names the missing file, the repository and the revision", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {"--no-api"});
  const std::string message =
      message_of<HubError>([&] { cur4llm::io::download_model("acme/absent", s.options(hub)); });
  CHECK_THAT(message, Contains("config.json") && Contains("acme/absent") && Contains("revision main") &&
                          Contains("HTTP 404"));
}

TEST_CASE("hub: an unreachable endpoint is named in the error", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  std::string endpoint;
  {
    FakeHub hub(s.dir.path, {});
    endpoint = hub.endpoint();
  }  // stopped: its port now refuses connections
  HubOptions options;
  options.endpoint = endpoint;
  options.cache_dir = s.cache;
  options.show_progress = false;
  const std::string message = message_of<HubError>([&] { cur4llm::io::download_model(kRepo, options); });
  CHECK_THAT(message, Contains(endpoint) && Contains("cannot reach"));
  ScopedEnv cache_env("HF_HUB_CACHE", s.cache.string());
  CHECK_THAT(message_of<HubError>([&] { cur4llm::io::resolve_model_id(kRepo, options); }),
             Contains("no folder") && Contains(endpoint) && Contains("cannot reach"));
}

TEST_CASE("hub: offline mode uses the cache or fails saying so, without a request", "[io][hub]") {
  CUR4LLM_REQUIRE_FAKE_HUB();
  Setup s;
  FakeHub hub(s.dir.path, {});
  auto options = s.options(hub);
  options.offline = true;
  const std::string message = message_of<std::runtime_error>([&] { cur4llm::io::download_model(kRepo, options); });
  CHECK_THAT(message, Contains(kRepo) && Contains("HF_HUB_OFFLINE"));
  {
    ScopedEnv cache_env("HF_HUB_CACHE", s.cache.string());
    CHECK_THAT(message_of<std::invalid_argument>([&] { cur4llm::io::resolve_model_id(kRepo, options); }),
               Contains(kRepo) && Contains("HF_HUB_OFFLINE"));
  }
  CHECK(hub.requests().empty());

  options.offline = false;
  const fs::path snapshot = cur4llm::io::download_model(kRepo, options);
  const size_t served = hub.requests().size();
  options.offline = true;
  CHECK(cur4llm::io::download_model(kRepo, options) == snapshot);
  ScopedEnv cache_env("HF_HUB_CACHE", s.cache.string());
  CHECK(cur4llm::io::resolve_model_id(kRepo, options) == snapshot);
  CHECK(hub.requests().size() == served);
}
