#pragma once
// What every cur4llm app shares: one clear error line and a non-zero exit.

#include <boost/program_options.hpp>
#include <c10/util/Exception.h>
#include <fmt/format.h>

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
