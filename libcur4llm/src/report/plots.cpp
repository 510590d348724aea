#include <cur4llm/report/plots.h>

#include <cur4llm/report/svg.h>
#include <cur4llm/search/compression_plan.h>

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <map>

namespace cur4llm::report {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// 1, 2 or 5 times a power of ten, near span / 5.
double nice_step(double span) {
  const double raw = span / 5;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double m = raw / p;
  return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

std::vector<double> linear_ticks(double lo, double hi) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  const double step = nice_step(hi - lo);
  for (double t = std::ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) {
    ticks.push_back(std::abs(t) < step * 1e-9 ? 0 : t);
  }
  return ticks;
}

std::vector<double> log_ticks(double lo, double hi) {  // lo, hi: values, not logs
  const double decades = std::log10(hi) - std::log10(lo);
  if (decades < 1) return linear_ticks(lo, hi);
  std::vector<double> ticks;
  const double mantissas_fine[] = {1, 2, 5};
  for (int e = static_cast<int>(std::floor(std::log10(lo))); e <= static_cast<int>(std::ceil(std::log10(hi))); ++e) {
    for (double m : mantissas_fine) {
      if (decades >= 3 && m != 1) continue;
      const double v = m * std::pow(10.0, e);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push_back(v);
    }
  }
  return ticks;
}

std::string tick_label(double v) { return fmt::format("{:g}", std::abs(v) < 1e-12 ? 0.0 : v); }

}  // namespace

const std::vector<std::string>& series_colors() {
  static const std::vector<std::string> colors = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                                  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
  return colors;
}

std::string line_plot_svg(const LinePlot& plot, const PlotOptions& o) {
  auto usable = [&](double x, double y) { return std::isfinite(x) && std::isfinite(y) && (!o.log_y || y > 0); };
  // The data range.
  double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
  for (const auto& s : plot.series) {
    for (const auto& [x, y] : s.points) {
      if (!usable(x, y)) continue;
      x_lo = std::min(x_lo, x), x_hi = std::max(x_hi, x);
      y_lo = std::min(y_lo, y), y_hi = std::max(y_hi, y);
    }
  }
  const bool any = std::isfinite(x_lo);
  for (const auto& r : plot.references) {
    if (!usable(any ? x_lo : 0, r.y)) continue;
    y_lo = std::min(y_lo, r.y), y_hi = std::max(y_hi, r.y);
  }
  if (!std::isnan(o.x_min)) x_lo = o.x_min;
  if (!std::isnan(o.x_max)) x_hi = o.x_max;
  if (!std::isnan(o.y_min)) y_lo = o.y_min;
  if (!std::isnan(o.y_max)) y_hi = o.y_max;
  auto widen = [](double& lo, double& hi, bool log) {
    if (!(hi > lo)) {
      const double c = std::isfinite(lo) ? lo : 1;
      lo = log ? c / 1.05 : c - std::max(std::abs(c) * 0.05, 0.05);
      hi = log ? c * 1.05 : c + std::max(std::abs(c) * 0.05, 0.05);
    }
  };
  widen(x_lo, x_hi, false);
  widen(y_lo, y_hi, o.log_y);
  if (o.log_y && !(y_lo > 0)) y_lo = y_hi / 10;

  const double left = o.margin_left, right = o.width - o.margin_right;
  const double top = o.margin_top, bottom = o.height - o.margin_bottom;
  auto f = [&](double y) { return o.log_y ? std::log10(y) : y; };
  auto X = [&](double x) { return left + o.inset + (x - x_lo) / (x_hi - x_lo) * (right - left - 2 * o.inset); };
  auto Y = [&](double y) { return bottom - o.inset - (f(y) - f(y_lo)) / (f(y_hi) - f(y_lo)) * (bottom - top - 2 * o.inset); };

  // The document grows (never the plot area) where the legend needs more room.
  std::size_t legend_rows = plot.series.size(), label_chars = 0;
  for (const auto& s : plot.series) label_chars = std::max(label_chars, s.name.size());
  for (const auto& r : plot.references) {
    label_chars = std::max(label_chars, r.name.size());
    ++legend_rows;
  }
  const double doc_width = std::max(o.width, right + 56 + 6.6 * static_cast<double>(label_chars));
  const double doc_height = std::max(o.height, top + 8 + 16.0 * static_cast<double>(legend_rows));
  SvgWriter svg(doc_width, doc_height);
  svg.text(left, 22, plot.title, {"start", 14, "#222", true});
  // Grid and ticks.
  for (double t : linear_ticks(x_lo, x_hi)) {
    svg.line(X(t), top, X(t), bottom, {"#e6e6e6", 1, ""});
    svg.text(X(t), bottom + 16, tick_label(t), {"middle", 11});
  }
  for (double t : o.log_y ? log_ticks(y_lo, y_hi) : linear_ticks(y_lo, y_hi)) {
    svg.line(left, Y(t), right, Y(t), {"#e6e6e6", 1, ""});
    svg.text(left - 6, Y(t) + 4, tick_label(t), {"end", 11});
  }
  svg.line(left, bottom, right, bottom, {"#444", 1, ""});
  svg.line(left, top, left, bottom, {"#444", 1, ""});
  svg.text((left + right) / 2, o.height - 12, plot.x_label, {"middle", 12});
  svg.text(16, (top + bottom) / 2, plot.y_label + (o.log_y ? " (log scale)" : ""), {"middle", 12, "#222", false, -90});
  if (!any) svg.text((left + right) / 2, (top + bottom) / 2, "no data to plot", {"middle", 13, "#888"});

  // References, then series, then the legend.
  double legend_y = top + 8;
  auto legend = [&](const StrokeStyle& style, const std::string& label) {
    svg.line(right + 14, legend_y, right + 40, legend_y, style);
    svg.text(right + 46, legend_y + 4, label, {"start", 11});
    legend_y += 16;
  };
  for (const auto& r : plot.references) {
    if (!usable(x_lo, r.y)) continue;
    const StrokeStyle style{"#333", 1.2, "3,3"};
    svg.line(left, Y(r.y), right, Y(r.y), style);
    legend(style, r.name);
  }
  const auto& colors = series_colors();
  static const char* const dashes[] = {"", "7,3", "2,2"};  // a new dash pattern each time the colours repeat
  for (std::size_t i = 0; i < plot.series.size(); ++i) {
    const auto& s = plot.series[i];
    const std::string& color = colors[i % colors.size()];
    const std::string dash = dashes[(i / colors.size()) % 3];
    std::vector<std::pair<double, double>> pts;
    for (const auto& p : s.points) {
      if (usable(p.first, p.second)) pts.push_back(p);
    }
    std::stable_sort(pts.begin(), pts.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<std::pair<double, double>> xy;
    for (const auto& [x, y] : pts) xy.emplace_back(X(x), Y(y));
    const StrokeStyle style{color, 1.8, dash};
    svg.polyline(xy, style, "series");
    for (std::size_t k = 0; k < xy.size(); ++k) {
      svg.circle(xy[k].first, xy[k].second, 3, color, fmt::format("{}: x {:.4g}, y {:.4g}", s.name, pts[k].first, pts[k].second));
    }
    legend(style, s.name);
  }
  return svg.str();
}

std::string kept_ratio_color(double kept) {
  if (!std::isfinite(kept)) kept = 0;
  kept = std::clamp(kept, 0.0, 1.0);
  struct Stop { double at; int r, g, b; };
  static const Stop stops[] = {{0, 0x80, 0x00, 0x26}, {0.5, 0xfd, 0x8d, 0x3c}, {1, 0xff, 0xff, 0xcc}};
  const Stop& a = kept <= 0.5 ? stops[0] : stops[1];
  const Stop& b = kept <= 0.5 ? stops[1] : stops[2];
  const double t = (kept - a.at) / (b.at - a.at);
  auto mix = [&](int u, int v) { return static_cast<int>(std::lround(u + (v - u) * t)); };
  return fmt::format("#{:02x}{:02x}{:02x}", mix(a.r, b.r), mix(a.g, b.g), mix(a.b, b.b));
}

namespace {

struct PlacedName {
  bool numbered = false;
  long index = -1;     // decoder layer
  std::string kind;    // what follows the index ("self_attn.q_proj")
};

// "model.decoder.layers.3.self_attn.q_proj" -> 3, "self_attn.q_proj"; "lm_head" -> not numbered.
PlacedName place(const std::string& name) {
  std::size_t start = 0;
  while (start < name.size()) {
    std::size_t end = name.find('.', start);
    if (end == std::string::npos) break;
    const std::string part = name.substr(start, end - start);
    if (!part.empty() && part.size() < 9 &&
        std::all_of(part.begin(), part.end(), [](unsigned char c) { return std::isdigit(c); })) {
      return {true, std::stol(part), name.substr(end + 1)};
    }
    start = end + 1;
  }
  return {false, -1, name};
}

std::string grouped(std::int64_t v) {  // 4594067712 -> "4,594,067,712"
  std::string digits = std::to_string(v);
  for (int i = static_cast<int>(digits.size()) - 3; i > (digits[0] == '-' ? 1 : 0); i -= 3) digits.insert(i, ",");
  return digits;
}

std::string last_component(const std::string& s) {
  const auto dot = s.rfind('.');
  return dot == std::string::npos ? s : s.substr(dot + 1);
}

}  // namespace

std::string rank_map_svg(const search::CompressionPlan& plan, const std::string& title) {
  std::vector<std::string> kinds;
  std::vector<long> layers;
  std::vector<std::string> others;
  std::map<std::pair<long, std::string>, const search::PlannedLayer*> cells;
  std::map<std::string, const search::PlannedLayer*> other_cells;
  for (const auto& l : plan.layers()) {
    const auto p = place(l.name);
    if (!p.numbered) {
      others.push_back(l.name);
      other_cells[l.name] = &l;
      continue;
    }
    if (std::find(kinds.begin(), kinds.end(), p.kind) == kinds.end()) kinds.push_back(p.kind);
    if (std::find(layers.begin(), layers.end(), p.index) == layers.end()) layers.push_back(p.index);
    cells[{p.index, p.kind}] = &l;
  }
  std::sort(layers.begin(), layers.end());
  // Column labels: the last name component where that is unambiguous.
  std::vector<std::string> labels;
  for (const auto& k : kinds) {
    const auto last = last_component(k);
    const auto same = std::count_if(kinds.begin(), kinds.end(), [&](const std::string& o) { return last_component(o) == last; });
    labels.push_back(same > 1 ? k : last);
  }
  std::size_t label_chars = 8;
  for (const auto& n : others) label_chars = std::max(label_chars, n.size());
  std::size_t column_chars = 6;
  for (const auto& l : labels) column_chars = std::max(column_chars, l.size());

  const double cell_w = std::max(76.0, 7.0 * column_chars + 8), cell_h = 24;
  const double left = 16 + 7.0 * label_chars, top = 64;
  const double grid_w = cell_w * std::max<std::size_t>(kinds.size(), 1);
  const double others_top = top + cell_h * layers.size() + (others.empty() || layers.empty() ? 0 : 10);
  const double grid_bottom = others_top + cell_h * others.size();
  const double legend_x = left + grid_w + 30;
  const double width = legend_x + 110, height = std::max(grid_bottom + 30, top + 230);

  SvgWriter svg(width, height);
  svg.text(16, 22, title, {"start", 14, "#222", true});
  svg.text(16, 40,
           fmt::format("{} layers, {} of {} parameters stored (kept ratio {:.4f}); colour: kept ratio of each layer",
                       plan.layers().size(), grouped(plan.stored_params()), grouped(plan.dense_params()),
                       plan.param_ratio()),
           {"start", 11, "#555"});
  for (std::size_t c = 0; c < kinds.size(); ++c) {
    svg.text(left + cell_w * (c + 0.5), top - 8, labels[c], {"middle", 11, "#222", true});
  }
  auto draw_cell = [&](double x, double y, const search::PlannedLayer& l) {
    const bool dense = l.method == "dense" || l.rank == 0;
    const double kept = static_cast<double>(l.stored_params) / static_cast<double>(l.dense_params);
    const std::string tip = dense ? fmt::format("{}: dense, {} parameters", l.name, l.dense_params)
                                  : fmt::format("{}: {}, rank {}, {} of {} parameters (kept {:.4f}, nominal ratio {:g})",
                                                l.name, l.method, l.rank, l.stored_params, l.dense_params, kept, l.ratio);
    svg.rect(x, y, cell_w, cell_h, dense ? kDenseCellColor : kept_ratio_color(kept), "white", tip);
    const std::string text = dense ? "dense" : fmt::format("{:.2f} r{}", kept, l.rank);
    svg.text(x + cell_w / 2, y + cell_h / 2 + 4, text,
             {"middle", 11, dense ? "#444" : (kept < 0.4 ? "#ffffff" : "#222"), false, 0});
  };
  for (std::size_t r = 0; r < layers.size(); ++r) {
    const double y = top + cell_h * r;
    svg.text(left - 8, y + cell_h / 2 + 4, fmt::format("layer {}", layers[r]), {"end", 11});
    for (std::size_t c = 0; c < kinds.size(); ++c) {
      auto it = cells.find({layers[r], kinds[c]});
      if (it == cells.end()) {
        svg.rect(left + cell_w * c, y, cell_w, cell_h, "#ffffff", "#eeeeee", "not in the plan");
      } else {
        draw_cell(left + cell_w * c, y, *it->second);
      }
    }
  }
  for (std::size_t r = 0; r < others.size(); ++r) {
    const double y = others_top + cell_h * r;
    svg.text(left - 8, y + cell_h / 2 + 4, others[r], {"end", 11});
    draw_cell(left, y, *other_cells[others[r]]);
  }
  // Colour legend: kept ratio 1 at the top, 0 at the bottom.
  const double bar_top = top, bar_h = 160, steps = 20;
  svg.text(legend_x, top - 8, "kept ratio", {"start", 11, "#222", true});
  for (int i = 0; i < steps; ++i) {
    const double kept = 1 - (i + 0.5) / steps;
    svg.rect(legend_x, bar_top + bar_h * i / steps, 18, bar_h / steps + 0.5, kept_ratio_color(kept));
  }
  for (double v : {0.0, 0.25, 0.5, 0.75, 1.0}) {
    svg.text(legend_x + 24, bar_top + bar_h * (1 - v) + 4, fmt::format("{:g}", v), {"start", 11});
  }
  svg.rect(legend_x, bar_top + bar_h + 14, 18, 14, kDenseCellColor);
  svg.text(legend_x + 24, bar_top + bar_h + 25, "dense", {"start", 11});
  return svg.str();
}

}  // namespace cur4llm::report
