#pragma once
// What every cur4llm app shares: one clear error line and a non-zero exit.

#include <cur4llm/version.h>

#include <boost/program_options.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <iostream>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace cur4llm::app {

/// Exit codes: 0 success, 1 failure while working, 2 bad command line.
enum ExitCode { kOk = 0, kFailed = 1, kUsage = 2 };

/// "a,b,,none" -> {"a", "b"}: a comma-separated flag value, empty items and "none" dropped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty() && item != "none") out.push_back(item);
  }
  return out;
}

/// "acur 0.1.0 (commit 3ca1b49abcde)": what --version prints.
inline std::string version_line(const char* app) {
  return fmt::format("{} {} (commit {})", app, cur4llm::version(), cur4llm::git_commit());
}

/// The version and commit as results.jsonl and exported configs record them.
inline nlohmann::json provenance() {
  return {{"name", "cur4llm"}, {"version", cur4llm::version()}, {"git_commit", cur4llm::git_commit()}};
}

/// Edit distance between two flag names (insertions, deletions, substitutions, adjacent swaps).
inline std::size_t flag_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

/// The known flag nearest to `given` (without dashes), or "" if none is near.
inline std::string nearest_flag(const boost::program_options::options_description& options, std::string given) {
  while (!given.empty() && given.front() == '-') given.erase(given.begin());
  if (const auto eq = given.find('='); eq != std::string::npos) given.resize(eq);
  std::string best;
  std::size_t best_distance = std::max<std::size_t>(2, given.size() / 3) + 1;
  for (const auto& option : options.options()) {
    const std::string& name = option->long_name();
    const std::size_t distance = flag_distance(given, name);
    if (distance < best_distance) {
      best_distance = distance;
      best = name;
    }
  }
  return best;
}

/// Parses the command line against `options` (which must hold "help" and "version").
/// Returns false when the app should exit at once with `exit_code`: no arguments
/// (usage on stderr, 2), --help (usage on stdout, 0), --version (0). An unknown
/// flag is refused naming the nearest known one ("did you mean --param_ratio_target?").
inline bool parse_command_line(const char* app, int argc, char** argv,
                               const boost::program_options::options_description& options,
                               boost::program_options::variables_map& vm, int& exit_code) {
  namespace po = boost::program_options;
  if (argc <= 1) {
    std::ostringstream usage;
    usage << options;
    fmt::print(stderr, "{}\n", usage.str());
    exit_code = kUsage;
    return false;
  }
  try {
    po::store(po::parse_command_line(argc, argv, options), vm);
  } catch (const po::unknown_option& e) {
    const std::string near = nearest_flag(options, e.get_option_name());
    throw po::error(near.empty() ? std::string(e.what()) : fmt::format("{}; did you mean --{}?", e.what(), near));
  }
  if (vm.count("help")) {
    std::cout << options << "\n";
    exit_code = kOk;
    return false;
  }
  if (vm.count("version")) {
    fmt::print("{}\n", version_line(app));
    exit_code = kOk;
    return false;
  }
  po::notify(vm);
  return true;
}

/// Makes the output folder `folder` (named by `flag` in errors) and checks that a file can be
/// written in it, so that a bad --output is found before the work, not after.
inline void check_output_folder(const std::string& folder, const char* flag) {
  namespace fs = std::filesystem;
  const fs::path dir = folder.empty() ? fs::path(".") : fs::path(folder);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    throw std::invalid_argument(fmt::format("{} {}: cannot create the folder ({})", flag, dir.string(),
                                            ec ? ec.message() : "a file of that name exists"));
  }
  const fs::path probe = dir / ".cur4llm-write-check";
  bool ok = static_cast<bool>(std::ofstream(probe, std::ios::app));
  fs::remove(probe, ec);
  if (!ok) throw std::invalid_argument(fmt::format("{} {}: cannot write files in this folder", flag, dir.string()));
}

/// std::invalid_argument unless --limit is -1 (all) or positive.
inline void check_limit(int64_t limit) {
  if (limit == 0 || limit < -1) {
    throw std::invalid_argument(fmt::format("--limit must be -1 (all) or positive, not {}", limit));
  }
}

/// Runs `body`, turning exceptions into one line on stderr and an exit code.
inline int guarded_main(const char* app, const std::function<int()>& body) {
  try {
    return body();
  } catch (const boost::program_options::error& e) {
    fmt::print(stderr, "{}: {} (see {} --help)\n", app, e.what(), app);
    return kUsage;
  } catch (const c10::Error& e) {  // LibTorch's own errors: drop the C++ backtrace
    fmt::print(stderr, "{}: error: {}\n", app, e.what_without_backtrace());
    return kFailed;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "{}: {}\n", app, e.what());
    return kUsage;
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}: error: {}\n", app, e.what());
    return kFailed;
  }
}

}  // namespace cur4llm::app
