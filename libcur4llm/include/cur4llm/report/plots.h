#pragma once
/// The report's pictures as SVG text: line plots (one polyline per series)
/// and the per-layer rank map of a compression plan.
///
///   report::LinePlot plot;
///   plot.title = "opt-125m, wikitext2";
///   plot.series.push_back({"svd", {{0.9, 31.2}, {0.8, 45.0}}});
///   std::string svg = report::line_plot_svg(plot, {});

#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::search {
class CompressionPlan;
}

namespace cur4llm::report {

/// One line of a plot: points (x, y), drawn in order of x.
struct Series {
  std::string name;                                ///< legend label
  std::vector<std::pair<double, double>> points;   ///< (x, y); non-finite points (and y <= 0 on a log axis) are left out
};

/// A horizontal reference line across the plot (the dense model's perplexity).
struct ReferenceLine {
  std::string name;  ///< legend label
  double y = 0;      ///< its value
};

/// What a line plot shows.
struct LinePlot {
  std::string title;                      ///< above the plot
  std::string x_label;                    ///< below the x axis
  std::string y_label;                    ///< beside the y axis
  std::vector<Series> series;             ///< one polyline (class "series") each: colours in order, then dashed
  std::vector<ReferenceLine> references;  ///< dashed horizontal lines
};

/// Size and scales of a line plot.
///
/// The plot area spans x from `margin_left` to `width - margin_right` and y
/// from `margin_top` to `height - margin_bottom`; the data range
/// [x_min, x_max] maps onto it less `inset` px at each end:
///   X(x) = margin_left + inset + (x - x_min) / (x_max - x_min) * (area width - 2 inset)
///   Y(y) = height - margin_bottom - inset - (f(y) - f(y_min)) / (f(y_max) - f(y_min)) * (area height - 2 inset)
/// with f = log10 on a log axis, else the identity. Unset limits (NaN) are the
/// data's minimum and maximum (references included in y); a zero span is widened by 5% each side.
/// The document grows to the right and down where the legend needs more room; the plot area does not move.
struct PlotOptions {
  double width = 860;          ///< px
  double height = 420;         ///< px
  double margin_left = 70;     ///< px, room for the y tick labels
  double margin_right = 280;   ///< px, room for the legend
  double margin_top = 40;      ///< px, room for the title
  double margin_bottom = 50;   ///< px, room for the x tick labels and label
  double inset = 10;           ///< px between the axes and the extreme points
  bool log_y = false;          ///< log10 scale on y
  double x_min = std::numeric_limits<double>::quiet_NaN();  ///< fixed x range (NaN: from the data)
  double x_max = std::numeric_limits<double>::quiet_NaN();  ///< fixed x range (NaN: from the data)
  double y_min = std::numeric_limits<double>::quiet_NaN();  ///< fixed y range (NaN: from the data)
  double y_max = std::numeric_limits<double>::quiet_NaN();  ///< fixed y range (NaN: from the data)
};

/// The plot as an SVG document; a plot without any drawable point says so in its body.
std::string line_plot_svg(const LinePlot& plot, const PlotOptions& options);

/// The series colours, in order (repeated after the last).
const std::vector<std::string>& series_colors();

/// The rank map's colour of a kept ratio (stored / dense parameters), clamped to [0, 1]:
/// "#800026" at 0, "#fd8d3c" at 0.5, "#ffffcc" at 1, linear in RGB between (ColorBrewer YlOrRd ends).
std::string kept_ratio_color(double kept);

/// The colour of a dense (uncompressed) layer in the rank map.
inline constexpr const char* kDenseCellColor = "#d9d9d9";

/// The per-layer rank map of a plan: decoder layers down (by the index in the
/// module name), projection kinds across, each cell coloured by its kept ratio
/// and labelled with it and the rank; dense cells grey and labelled "dense";
/// modules outside the numbered layers (lm_head) in rows of their own below.
std::string rank_map_svg(const search::CompressionPlan& plan, const std::string& title);

}  // namespace cur4llm::report
