#pragma once
/// A small SVG writer: shapes and text appended to a document, every
/// attribute value and text escaped, so the output is well-formed XML.
///
///   report::SvgWriter svg(400, 300);
///   svg.line(10, 290, 390, 290, "black");
///   svg.text(200, 20, "title", {"middle", 14});
///   std::string doc = svg.str();

#include <string>
#include <utility>
#include <vector>

namespace cur4llm::report {

/// Escapes &, <, >, " and ' for XML text and attribute values; drops control characters XML forbids.
std::string xml_escape(const std::string& text);

/// How a text element is drawn.
struct TextStyle {
  std::string anchor = "start";  ///< text-anchor: start, middle or end
  double size = 12;              ///< font size in px
  std::string fill = "#222";     ///< colour
  bool bold = false;             ///< font-weight bold
  double rotate = 0;             ///< degrees, about the text's anchor point
};

/// How a line or polyline is stroked.
struct StrokeStyle {
  std::string color = "black";  ///< stroke colour
  double width = 1;             ///< stroke width in px
  std::string dash;             ///< stroke-dasharray ("" for solid)
};

class SvgWriter {
 public:
  /// A document of `width` x `height` px with a white background.
  SvgWriter(double width, double height);

  /// A straight line.
  void line(double x1, double y1, double x2, double y2, const StrokeStyle& style = {});
  /// An open polyline through `points` (x, y), not filled; `css_class` names the series ("" for none).
  void polyline(const std::vector<std::pair<double, double>>& points, const StrokeStyle& style,
                const std::string& css_class = "");
  /// A rectangle; `title` becomes a tooltip ("" for none).
  void rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke = "",
            const std::string& title = "");
  /// A filled circle; `title` becomes a tooltip ("" for none).
  void circle(double cx, double cy, double r, const std::string& fill, const std::string& title = "");
  /// A text element.
  void text(double x, double y, const std::string& content, const TextStyle& style = {});

  /// The document: an `<svg>` element with its namespace, no XML declaration (so it also inlines into HTML).
  std::string str() const;

 private:
  double width_;
  double height_;
  std::string body_;
};

/// Coordinates as the writer prints them: fixed, two decimals ("12.50").
std::string svg_number(double v);

}  // namespace cur4llm::report
