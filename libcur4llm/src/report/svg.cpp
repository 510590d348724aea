#include <cur4llm/report/svg.h>

#include <fmt/format.h>

#include <cmath>

namespace cur4llm::report {

std::string xml_escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        // XML 1.0 forbids C0 controls other than tab, newline and carriage return.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r') break;
        out += c;
    }
  }
  return out;
}

std::string svg_number(double v) {
  if (!std::isfinite(v)) v = 0;
  std::string s = fmt::format("{:.2f}", v);
  return s == "-0.00" ? "0.00" : s;
}

namespace {

std::string stroke_attrs(const StrokeStyle& s) {
  std::string out = fmt::format(R"( stroke="{}" stroke-width="{}")", xml_escape(s.color), svg_number(s.width));
  if (!s.dash.empty()) out += fmt::format(R"( stroke-dasharray="{}")", xml_escape(s.dash));
  return out;
}

std::string title_element(const std::string& title) {
  return title.empty() ? "" : "<title>" + xml_escape(title) + "</title>";
}

}  // namespace

SvgWriter::SvgWriter(double width, double height) : width_(width), height_(height) {
  rect(0, 0, width, height, "white");
}

void SvgWriter::line(double x1, double y1, double x2, double y2, const StrokeStyle& style) {
  body_ += fmt::format(R"(<line x1="{}" y1="{}" x2="{}" y2="{}"{}/>)", svg_number(x1), svg_number(y1),
                       svg_number(x2), svg_number(y2), stroke_attrs(style)) + "\n";
}

void SvgWriter::polyline(const std::vector<std::pair<double, double>>& points, const StrokeStyle& style,
                         const std::string& css_class) {
  std::string coords;
  for (const auto& [x, y] : points) coords += (coords.empty() ? "" : " ") + svg_number(x) + "," + svg_number(y);
  const std::string cls = css_class.empty() ? "" : fmt::format(R"( class="{}")", xml_escape(css_class));
  body_ += fmt::format(R"(<polyline{} fill="none"{} points="{}"/>)", cls, stroke_attrs(style), coords) + "\n";
}

void SvgWriter::rect(double x, double y, double w, double h, const std::string& fill, const std::string& stroke,
                     const std::string& title) {
  const std::string s = stroke.empty() ? "" : fmt::format(R"( stroke="{}")", xml_escape(stroke));
  const std::string head = fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="{}"{})", svg_number(x),
                                       svg_number(y), svg_number(w), svg_number(h), xml_escape(fill), s);
  body_ += (title.empty() ? head + "/>" : head + ">" + title_element(title) + "</rect>") + "\n";
}

void SvgWriter::circle(double cx, double cy, double r, const std::string& fill, const std::string& title) {
  const std::string head = fmt::format(R"(<circle cx="{}" cy="{}" r="{}" fill="{}")", svg_number(cx),
                                       svg_number(cy), svg_number(r), xml_escape(fill));
  body_ += (title.empty() ? head + "/>" : head + ">" + title_element(title) + "</circle>") + "\n";
}

void SvgWriter::text(double x, double y, const std::string& content, const TextStyle& style) {
  std::string attrs = fmt::format(R"(x="{}" y="{}" font-size="{}" fill="{}")", svg_number(x), svg_number(y),
                                  svg_number(style.size), xml_escape(style.fill));
  if (style.anchor != "start") attrs += fmt::format(R"( text-anchor="{}")", xml_escape(style.anchor));
  if (style.bold) attrs += R"( font-weight="bold")";
  if (style.rotate != 0) {
    attrs += fmt::format(R"x( transform="rotate({} {} {})")x", svg_number(style.rotate), svg_number(x), svg_number(y));
  }
  body_ += "<text " + attrs + ">" + xml_escape(content) + "</text>\n";
}

std::string SvgWriter::str() const {
  return fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1}" viewBox="0 0 {0} {1}" )"
                     R"(font-family="DejaVu Sans, Helvetica, Arial, sans-serif">)",
                     svg_number(width_), svg_number(height_)) +
         "\n" + body_ + "</svg>\n";
}

}  // namespace cur4llm::report
