#pragma once
/// Progress of long work: "label  done/total  rate  ETA", one line updated in
/// place on a terminal, plain lines every few seconds otherwise.

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace cur4llm::util {

class Progress {
 public:
  /// `unit` names what is counted ("windows", "layers"); output goes to `out` (stderr by default).
  Progress(std::string label, int64_t total, std::string unit, std::FILE* out = stderr);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  /// Adds `n` finished items and redraws when due.
  void advance(int64_t n = 1);
  /// Prints the final line (called by the destructor if not yet done).
  void finish();
  /// Disables all output (for library callers that want silence).
  static void set_enabled(bool enabled);

 private:
  void draw(bool final_line);

  std::string label_, unit_;
  int64_t total_, done_ = 0;
  std::FILE* out_;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace cur4llm::util
