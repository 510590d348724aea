#include <cur4llm/quant/packed_quant.h>

#include "common.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <utility>

namespace cur4llm::quant {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t max_code(int bits) { return (int64_t{1} << bits) - 1; }

std::string shape_str(at::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

void check_bits(const std::string& who, int bits) {
  if (bits < 2 || bits > 8) {
    throw std::invalid_argument(fmt::format("{}: {} bits is not supported (2 to 8)", who, bits));
  }
}

// Columns per group of a row of `cols`: the whole row for group_size 0 or >= cols.
int64_t group_cols(const QuantFormat& format, int64_t cols) {
  return format.group_size == 0 ? cols : std::min(format.group_size, cols);
}

// A chunk: the fewest whole codes that fill whole bytes (lcm(bits, 8) bits).
struct Chunk {
  int64_t codes, bytes;
};
Chunk chunk_of(int bits) {
  const int g = std::gcd(bits, 8);
  return {8 / g, bits / g};
}

// Whether code j (bits [j*bits, (j+1)*bits) of a chunk) and byte i (bits
// [8i, 8i+8)) share bits.
bool overlap(int64_t j, int64_t i, int bits) { return j * bits < 8 * (i + 1) && 8 * i < (j + 1) * bits; }

// uint8 `t` moved left by d bits, or right by -d; bits pushed out of the byte are lost.
at::Tensor shift_bits(const at::Tensor& t, int64_t d) {
  return d > 0 ? t.__lshift__(d) : d < 0 ? t.__rshift__(-d) : t;
}

// out = OR over k of parts(k), written into the view `out`.
template <class Parts>
void or_into(at::Tensor out, int64_t n, Parts&& part) {
  bool first = true;
  for (int64_t k = 0; k < n; ++k) {
    auto p = part(k);
    if (!p.defined()) continue;
    if (first) out.copy_(p);
    else out.bitwise_or_(p);
    first = false;
  }
}

// Zero columns up to `cols` (a no-op when already there).
at::Tensor pad_cols(const at::Tensor& t, int64_t cols) {
  return t.size(1) == cols ? t : at::constant_pad_nd(t, {0, cols - t.size(1)});
}

// pack_codes without the range check; codes already in [0, 2^bits). All in
// uint8: byte i of a chunk ORs the codes that overlap it, each shifted into place.
at::Tensor pack_checked(const at::Tensor& codes, int bits) {
  const int64_t rows = codes.size(0), cols = codes.size(1);
  const auto c = chunk_of(bits);
  const int64_t chunks = ceil_div(cols, c.codes);
  // Codes past the row's end are zero, so are the padding bits.
  const auto x = pad_cols(codes.to(at::kByte), chunks * c.codes).reshape({rows, chunks, c.codes});
  auto bytes = at::empty({rows, chunks, c.bytes}, codes.options().dtype(at::kByte));
  for (int64_t i = 0; i < c.bytes; ++i) {
    or_into(bytes.select(2, i), c.codes, [&](int64_t j) {
      return overlap(j, i, bits) ? shift_bits(x.select(2, j), j * bits - 8 * i) : at::Tensor();
    });
  }
  return bytes.view({rows, chunks * c.bytes}).narrow(1, 0, packed_cols(cols, bits)).contiguous();
}

// w in fp32 as [rows, groups, group_cols], the last group padded with zeros
// (which the bounds min(., 0) and max(., 0) never notice).
at::Tensor grouped_fp32(const at::Tensor& w, const QuantFormat& format) {
  if (w.dim() != 2 || !at::isFloatingType(w.scalar_type()) || w.size(1) == 0) {
    throw std::invalid_argument(fmt::format("quantize: the weight must be a 2-d floating tensor with columns, "
                                            "not {} {}",
                                            c10::toString(w.scalar_type()), shape_str(w.sizes())));
  }
  const int64_t rows = w.size(0), cols = w.size(1), gc = group_cols(format, cols);
  const int64_t groups = ceil_div(cols, gc);
  return pad_cols(w.to(at::kFloat), groups * gc).reshape({rows, groups, gc});
}

// The smallest fp16 value >= s (s > 0, fp32): the nearest fp16, stepped up by
// one unit in the last place (its bit pattern + 1) when below s.
at::Tensor half_at_least(const at::Tensor& s) {
  const auto h = s.to(at::kHalf);
  const auto below = (h.to(at::kFloat) < s).to(at::kShort);
  return (h.view(at::kShort) + below).view(at::kHalf);
}

// Per group of x [rows, groups, gc]: the fp16 scales and the lower bounds xmin
// (fp32, [rows, groups, 1]). Throws for non-finite weights and fp16 overflow.
std::pair<at::Tensor, at::Tensor> group_scales(const at::Tensor& x, int bits) {
  auto xmin = at::amin(x, {2}, /*keepdim=*/true);
  auto xmax = at::amax(x, {2}, /*keepdim=*/true);
  // amin and amax propagate NaN, so checking the bounds checks every element.
  if (!at::isfinite(xmin).logical_and(at::isfinite(xmax)).all().item<bool>()) {
    throw std::invalid_argument("quantize: the weight holds NaN or infinite values");
  }
  xmin.clamp_max_(0.0);
  xmax.clamp_min_(0.0);
  const auto both_zero = (xmin == 0).logical_and(xmax == 0);
  xmin = at::where(both_zero, at::full_like(xmin, -1.0), xmin);
  xmax = at::where(both_zero, at::full_like(xmax, 1.0), xmax);
  // A tensor divisor: CUDA would multiply by the reciprocal of a scalar one.
  const auto range = xmax - xmin;
  const auto scale = half_at_least(at::clamp_min(range / at::full_like(range, static_cast<double>(max_code(bits))),
                                                 std::ldexp(1.0, -24)));
  if (!at::isfinite(scale).all().item<bool>()) {
    throw std::invalid_argument(fmt::format(
        "quantize: a group's range {} needs a scale above fp16's largest value 65504 at {} bits",
        at::amax(range).item<double>(), bits));
  }
  return {scale.squeeze(2), xmin};
}

// Codes (fp32, [rows, groups, gc]) and fp16 scales and zeros ([rows, groups]).
struct Grouped {
  at::Tensor q, scales, zeros;
};
Grouped quantize_grouped(const at::Tensor& w, const QuantFormat& format) {
  const auto x = grouped_fp32(w, format);
  auto [scales, xmin] = group_scales(x, format.bits);
  const double top = static_cast<double>(max_code(format.bits));
  const auto s = scales.to(at::kFloat).unsqueeze(2);
  // abs: no -0 zero points (from xmin = +0) in the stored bytes.
  const auto zero = at::clamp(at::round(-xmin / s), 0.0, top).abs();
  auto q = x.div(s);
  q.round_().add_(zero).clamp_(0.0, top);
  return {std::move(q), std::move(scales), zero.squeeze(2).to(at::kHalf)};
}

// scales * (q - zeros) over [rows, groups, gc] fp32 codes (overwritten), cut
// to `cols`, times the column multipliers m (fp16 [cols], if defined), in
// `dtype`. Exact in fp32 up to m: an fp16 scale (11 significant bits) times an
// integer of at most 8 bits; the product with m is one correctly rounded fp32 multiply.
at::Tensor dequantize_grouped(at::Tensor q, const at::Tensor& scales, const at::Tensor& zeros, int64_t cols,
                              c10::ScalarType dtype, const at::Tensor& m = {}) {
  q.sub_(zeros.to(at::kFloat).unsqueeze(2)).mul_(scales.to(at::kFloat).unsqueeze(2));
  auto w = q.view({q.size(0), q.size(1) * q.size(2)}).narrow(1, 0, cols);
  if (m.defined()) w = w.mul(m.to(at::kFloat).unsqueeze(0));
  return w.to(dtype).contiguous();
}

// The column multipliers of `format` for a weight of `cols` columns on `device`:
// undefined for a format that is not activation-aware (which refuses any), else
// `given` rounded to fp16 (all ones when undefined). They must be finite and > 0.
at::Tensor column_multipliers(const std::string& who, const QuantFormat& format, const at::Tensor& given, int64_t cols,
                              c10::Device device) {
  if (!format.activation_aware) {
    if (given.defined()) {
      throw std::invalid_argument(fmt::format("{}: format \"{}\" takes no input scales", who, format.name));
    }
    return {};
  }
  if (!given.defined()) return at::ones({cols}, at::TensorOptions().dtype(at::kHalf).device(device));
  if (given.dim() != 1 || given.size(0) != cols || !at::isFloatingType(given.scalar_type())) {
    throw std::invalid_argument(fmt::format("{}: input scales must be a floating [{}] tensor, not {} {}", who, cols,
                                            c10::toString(given.scalar_type()), shape_str(given.sizes())));
  }
  auto m = given.to(device, at::kHalf);
  const auto f = m.to(at::kFloat);
  if (!(at::isfinite(f).logical_and(f > 0)).all().item<bool>()) {
    throw std::invalid_argument(fmt::format("{}: input scales must be finite and positive in fp16", who));
  }
  return m;
}

// w / m in fp32 (w itself when m is undefined).
at::Tensor divided(const at::Tensor& w, const at::Tensor& m) {
  return m.defined() ? w.to(at::kFloat).div(m.to(at::kFloat).unsqueeze(0)) : w;
}

}  // namespace

const std::vector<std::string>& quant_format_names() {
  static const std::vector<std::string> names{"rtn_int8", "rtn_int6", "rtn_int4", "awq_int8", "awq_int4"};
  return names;
}

QuantFormat parse_quant_format(const std::string& name) {
  if (name == "rtn_int8") return {name, 8, 0};
  if (name == "rtn_int6") return {name, 6, 0};
  if (name == "rtn_int4") return {name, 4, 128};
  if (name == "awq_int8") return {name, 8, 0, true};
  if (name == "awq_int4") return {name, 4, 128, true};
  throw std::invalid_argument(
      fmt::format("unknown quantization format \"{}\" (known: {})", name, fmt::join(quant_format_names(), ", ")));
}

int64_t packed_cols(int64_t cols, int bits) { return ceil_div(cols * bits, 8); }

at::Tensor pack_codes(const at::Tensor& codes, int bits) {
  check_bits("pack_codes", bits);
  if (codes.dim() != 2 || !at::isIntegralType(codes.scalar_type(), /*includeBool=*/false)) {
    throw std::invalid_argument(fmt::format("pack_codes: codes must be a 2-d integer tensor, not {} {}",
                                            c10::toString(codes.scalar_type()), shape_str(codes.sizes())));
  }
  if (codes.numel() > 0 && (at::amin(codes).item<int64_t>() < 0 || at::amax(codes).item<int64_t>() > max_code(bits))) {
    throw std::invalid_argument(fmt::format("pack_codes: codes must lie in [0, {}] for {} bits", max_code(bits), bits));
  }
  auto packed = pack_checked(codes, bits);
  return packed.is_alias_of(codes) ? packed.clone() : packed;  // 8 bits: never the caller's own storage
}

at::Tensor unpack_codes(const at::Tensor& packed, int bits, int64_t cols) {
  check_bits("unpack_codes", bits);
  if (cols < 0 || packed.dim() != 2 || packed.scalar_type() != at::kByte || packed.size(1) != packed_cols(cols, bits)) {
    throw std::invalid_argument(fmt::format("unpack_codes: expected uint8 [rows, {}] for {} columns at {} bits, "
                                            "not {} {}",
                                            packed_cols(std::max<int64_t>(cols, 0), bits), cols, bits,
                                            c10::toString(packed.scalar_type()), shape_str(packed.sizes())));
  }
  const int64_t rows = packed.size(0);
  const auto c = chunk_of(bits);
  const int64_t chunks = ceil_div(cols, c.codes);
  const auto x = pad_cols(packed, chunks * c.bytes).reshape({rows, chunks, c.bytes});
  auto codes = at::empty({rows, chunks, c.codes}, packed.options());
  for (int64_t j = 0; j < c.codes; ++j) {
    auto out = codes.select(2, j);
    or_into(out, c.bytes, [&](int64_t i) {
      return overlap(j, i, bits) ? shift_bits(x.select(2, i), 8 * i - j * bits) : at::Tensor();
    });
    if (bits < 8) out.bitwise_and_(max_code(bits));  // drop the next code's bits
  }
  return codes.view({rows, chunks * c.codes}).narrow(1, 0, cols).contiguous();
}

int64_t QuantizedTensor::nbytes() const {
  int64_t n = 0;
  for (const auto* t : {&qweight, &scales, &zeros, &input_scales}) {
    if (t->defined()) n += t->numel() * static_cast<int64_t>(t->element_size());
  }
  return n;
}

QuantizedTensor quantize_tensor(const at::Tensor& w, const QuantFormat& format, const at::Tensor& input_scales) {
  detail::check_quant_format("quantize_tensor", format);
  c10::NoGradGuard no_grad;
  const auto m = column_multipliers("quantize_tensor", format, input_scales, w.dim() == 2 ? w.size(1) : 0, w.device());
  auto g = quantize_grouped(divided(w, m), format);
  QuantizedTensor out;
  out.rows = w.size(0);
  out.cols = w.size(1);
  out.format = format;
  const auto codes = g.q.view({out.rows, g.q.size(1) * g.q.size(2)}).narrow(1, 0, out.cols).to(at::kByte);
  out.qweight = pack_checked(codes, format.bits);
  out.scales = std::move(g.scales);
  out.zeros = std::move(g.zeros);
  out.input_scales = m;
  return out;
}

at::Tensor dequantize_tensor(const QuantizedTensor& q, c10::ScalarType dtype) {
  detail::check_quant_format("dequantize_tensor", q.format);
  c10::NoGradGuard no_grad;
  const int64_t gc = group_cols(q.format, q.cols);
  const auto codes = unpack_codes(q.qweight, q.format.bits, q.cols).to(at::kFloat);
  const int64_t groups = ceil_div(q.cols, gc);
  if (q.scales.dim() != 2 || q.scales.size(1) != groups || q.zeros.sizes() != q.scales.sizes()) {
    throw std::invalid_argument(fmt::format("dequantize_tensor: scales {} and zeros {} do not fit {} groups",
                                            shape_str(q.scales.sizes()), shape_str(q.zeros.sizes()), groups));
  }
  if (q.format.activation_aware != q.input_scales.defined() ||
      (q.input_scales.defined() && q.input_scales.sizes() != at::IntArrayRef{q.cols})) {
    throw std::invalid_argument(fmt::format("dequantize_tensor: format \"{}\" {} input scales [{}]", q.format.name,
                                            q.format.activation_aware ? "needs" : "takes no", q.cols));
  }
  const auto grouped = pad_cols(codes, groups * gc).view({q.rows, groups, gc});
  return dequantize_grouped(grouped, q.scales, q.zeros, q.cols, dtype, q.input_scales);
}

at::Tensor fake_quantize(const at::Tensor& w, const QuantFormat& format, const at::Tensor& input_scales) {
  detail::check_quant_format("fake_quantize", format);
  c10::NoGradGuard no_grad;
  const auto m = column_multipliers("fake_quantize", format, input_scales, w.dim() == 2 ? w.size(1) : 0, w.device());
  const auto g = quantize_grouped(divided(w, m), format);
  return dequantize_grouped(g.q, g.scales, g.zeros, w.size(1), w.scalar_type(), m);
}

QuantizedTensor make_quantized_tensor(const std::string& name, at::Tensor qweight, at::Tensor scales, at::Tensor zeros,
                                      int64_t rows, int64_t cols, const QuantFormat& format, at::Tensor input_scales) {
  detail::check_quant_format(name, format);
  const auto fail = [&](const std::string& what) {
    throw std::invalid_argument(fmt::format("{}: {} (format {}, {} x {})", name, what, format.name, rows, cols));
  };
  if (rows < 0 || cols < 1) fail("the shape must have rows >= 0 and cols >= 1");
  const int64_t groups = ceil_div(cols, group_cols(format, cols));
  const auto check = [&](const at::Tensor& t, const char* part, at::ScalarType dtype, std::vector<int64_t> shape) {
    if (!t.defined()) fail(fmt::format("{} is missing", part));
    if (t.scalar_type() != dtype) {
      fail(fmt::format("{} has dtype {}, expected {}", part, c10::toString(t.scalar_type()), c10::toString(dtype)));
    }
    if (t.sizes() != at::IntArrayRef(shape)) {
      fail(fmt::format("{} has shape {}, expected {}", part, shape_str(t.sizes()), shape_str(shape)));
    }
  };
  check(qweight, "qweight", at::kByte, {rows, packed_cols(cols, format.bits)});
  check(scales, "scales", at::kHalf, {rows, groups});
  check(zeros, "zeros", at::kHalf, {rows, groups});
  if (scales.device() != qweight.device() || zeros.device() != qweight.device()) {
    fail("qweight, scales and zeros must be on one device");
  }
  if (!at::isfinite(scales).all().item<bool>()) fail("scales hold NaN or infinite values");
  const auto z = zeros.to(at::kFloat);
  if (((z != at::round(z)) | (z < 0) | (z > static_cast<double>(max_code(format.bits)))).any().item<bool>()) {
    fail(fmt::format("zeros must be integers in [0, {}]", max_code(format.bits)));
  }
  if (format.activation_aware) {
    check(input_scales, "input_scales", at::kHalf, {cols});
    if (input_scales.device() != qweight.device()) fail("input_scales must be on the device of qweight");
    const auto m = input_scales.to(at::kFloat);
    if (!(at::isfinite(m).logical_and(m > 0)).all().item<bool>()) fail("input_scales must be finite and positive");
  } else if (input_scales.defined()) {
    fail("this format stores no input_scales");
  }
  QuantizedTensor out;
  out.qweight = std::move(qweight);
  out.scales = std::move(scales);
  out.zeros = std::move(zeros);
  out.input_scales = std::move(input_scales);
  out.rows = rows;
  out.cols = cols;
  out.format = format;
  return out;
}

namespace detail {

void check_quant_format(const std::string& who, const QuantFormat& format) {
  check_bits(fmt::format("{}: format \"{}\"", who, format.name), format.bits);
  if (format.group_size < 0) {
    throw std::invalid_argument(fmt::format("{}: format \"{}\" has a negative group size {}", who, format.name,
                                            format.group_size));
  }
}

void check_quantizable(const std::string& who, const at::Tensor& w, const QuantFormat& format,
                       const at::Tensor& input_scales) {
  check_quant_format(who, format);
  c10::NoGradGuard no_grad;
  try {
    const auto m = column_multipliers(who, format, input_scales, w.dim() == 2 ? w.size(1) : 0, w.device());
    group_scales(grouped_fp32(divided(w, m), format), format.bits);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{}: {}", who, e.what()));
  }
}

void refuse_activation_aware(const std::string& who, const QuantFormat& format) {
  if (format.activation_aware) {
    throw std::invalid_argument(fmt::format("{}: {} is activation-aware and needs calibration data "
                                            "(quant::awq_quantize_model)", who, format.name));
  }
}

}  // namespace detail

}  // namespace cur4llm::quant
