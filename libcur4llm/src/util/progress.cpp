#include <cur4llm/util/progress.h>

#include <fmt/format.h>

#include <atomic>
#include <unistd.h>

namespace cur4llm::util {
namespace {

std::atomic<bool> g_enabled{true};

std::string format_seconds(double s) {
  if (s < 0 || s != s) return "?";
  const auto total = static_cast<int64_t>(s + 0.5);
  if (total >= 3600) return fmt::format("{}h{:02}m", total / 3600, (total / 60) % 60);
  if (total >= 60) return fmt::format("{}m{:02}s", total / 60, total % 60);
  return fmt::format("{}s", total);
}

}  // namespace

Progress::Progress(std::string label, int64_t total, std::string unit, std::FILE* out)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), out_(out),
      tty_(out && isatty(fileno(out))), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

Progress::~Progress() {
  if (!finished_) finish();
}

void Progress::set_enabled(bool enabled) { g_enabled = enabled; }

void Progress::advance(int64_t n) {
  done_ += n;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since >= (tty_ ? 0.2 : 10.0)) {
    last_draw_ = now;
    draw(false);
  }
}

void Progress::finish() {
  finished_ = true;
  draw(true);
}

void Progress::draw(bool final_line) {
  if (!g_enabled || !out_) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  const double eta = rate > 0 ? (total_ - done_) / rate : -1.0;
  std::string line = fmt::format("{}  {}/{} {}  {:.2f} {}/s", label_, done_, total_, unit_, rate, unit_);
  line += final_line ? fmt::format("  done in {}", format_seconds(elapsed)) : fmt::format("  ETA {}", format_seconds(eta));
  if (tty_) {
    fmt::print(out_, "\r\033[K{}{}", line, final_line ? "\n" : "");
  } else {
    fmt::print(out_, "{}\n", line);
  }
  std::fflush(out_);
}

}  // namespace cur4llm::util
