// Packed RTN quantization (compress/packed_quant.h): bytes worked out by hand
// from the format, pack/unpack against a bit-by-bit reference packer, the error
// bound |w - w'| <= scale / 2 on random and adversarial rows, rtn_int8 codes
// against the formula computed here element by element, the checks of stored
// triples, and rtn_quantize_model with a format on the tiny LLaMA.
#include "product_checks.h"
#include "test_paths.h"

#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/quant/packed_linear.h>
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/util/fused_kernels.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/kv_cache.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

using namespace cur4llm;
using quant::QuantFormat;
using test::model_dir;

namespace {

at::Tensor bytes_of(const at::Tensor& t) { return t.to(at::kLong).reshape({-1}); }

std::vector<int64_t> to_vec(const at::Tensor& t) {
  auto c = bytes_of(t).contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

at::Tensor codes_row(const std::vector<int64_t>& v) { return at::tensor(v, at::kLong).unsqueeze(0); }

at::Tensor float_rows(const std::vector<std::vector<float>>& rows) {
  std::vector<at::Tensor> r;
  for (const auto& v : rows) r.push_back(at::tensor(v, at::kFloat).unsqueeze(0));
  return at::cat(r);
}

// The format written out bit by bit: code j of a row occupies bits
// [j*bits, (j+1)*bits) of the row's bytes, least significant bit first.
std::vector<uint8_t> reference_pack_row(const std::vector<int64_t>& codes, int bits) {
  std::vector<uint8_t> out((codes.size() * bits + 7) / 8, 0);
  for (size_t j = 0; j < codes.size(); ++j) {
    for (int k = 0; k < bits; ++k) {
      const size_t bit = j * bits + k;
      if ((codes[j] >> k) & 1) out[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    }
  }
  return out;
}

uint16_t half_bits(c10::Half h) { return h.x; }
c10::Half half_from_bits(uint16_t b) { return c10::Half(b, c10::Half::from_bits()); }

// The scale of a group with range `range` (fp32), element by element: the
// smallest fp16 value >= max(range / L, 2^-24), by stepping fp16 bit patterns.
float reference_scale(float range, int bits) {
  const float s = std::max(range / static_cast<float>((1 << bits) - 1), std::ldexp(1.0f, -24));
  c10::Half h = half_from_bits(0x0001);  // 2^-24
  while (static_cast<float>(h) < s) h = half_from_bits(static_cast<uint16_t>(half_bits(h) + 1));
  return static_cast<float>(h);
}

struct ReferenceRow {
  float scale;
  float zero;
  std::vector<int64_t> codes;
};

// PROTOCOL.md's per-channel formula against the fp16 scale, element by element.
ReferenceRow reference_quantize_row(const std::vector<float>& w, int bits) {
  float lo = 0, hi = 0;
  for (float x : w) lo = std::min(lo, x), hi = std::max(hi, x);
  if (lo == 0 && hi == 0) lo = -1, hi = 1;
  const float top = static_cast<float>((1 << bits) - 1);
  ReferenceRow r;
  r.scale = reference_scale(hi - lo, bits);
  r.zero = std::min(std::max(std::nearbyint(-lo / r.scale), 0.0f), top);  // round half to even
  for (float x : w) {
    r.codes.push_back(static_cast<int64_t>(std::min(std::max(std::nearbyint(x / r.scale) + r.zero, 0.0f), top)));
  }
  return r;
}

// Rows that stress the bounds: random, zero, constant, one-signed, outliers,
// tiny and huge magnitudes.
at::Tensor adversarial_rows(int64_t cols, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto w = at::randn({16, cols}, gen, at::TensorOptions().dtype(at::kFloat));
  w[1].zero_();
  w[2].fill_(0.37);
  w[3].fill_(-2.5);
  w[4].abs_().neg_();
  w[5].abs_();
  w[6].mul_(0.01);
  w[6][cols / 2] = 1000.0;     // one huge outlier
  w[7].mul_(0.01);
  w[7][cols - 1] = -500.0;     // an outlier in the last (short) group
  w[8].mul_(1e-6);             // scale below fp16's normal range
  w[9].mul_(1e-30);            // scale below 2^-24
  w[10].mul_(1e4);             // large but representable scales
  w.narrow(1, 0, std::min<int64_t>(cols, 128))[11].mul_(100.0);  // the first group larger than the rest
  w[12].narrow(0, 0, std::min<int64_t>(cols, 128)).zero_();        // a zero first group
  w[13].fill_(1e-44);          // fp32 subnormals: range / L underflows to 0
  w[13][0] = -1e-44;
  return w;
}

// One scale per element: scales [rows, groups] widened over the groups' columns.
at::Tensor element_scales(const quant::QuantizedTensor& q) {
  const int64_t gc = q.format.group_size == 0 ? q.cols : std::min(q.format.group_size, q.cols);
  return q.scales.to(at::kDouble).repeat_interleave(gc, 1).narrow(1, 0, q.cols);
}

const std::vector<QuantFormat> all_formats{quant::parse_quant_format("rtn_int8"),
                                           quant::parse_quant_format("rtn_int6"),
                                           quant::parse_quant_format("rtn_int4"),
                                           {"int3_g32", 3, 32},
                                           {"int2_g7", 2, 7},
                                           {"int5", 5, 0}};

}  // namespace

TEST_CASE("quant formats by name, packed sizes", "[packed_quant][unit]") {
  const auto i8 = quant::parse_quant_format("rtn_int8");
  const auto i6 = quant::parse_quant_format("rtn_int6");
  const auto i4 = quant::parse_quant_format("rtn_int4");
  CHECK((i8.name == "rtn_int8" && i8.bits == 8 && i8.group_size == 0));
  CHECK((i6.name == "rtn_int6" && i6.bits == 6 && i6.group_size == 0));
  CHECK((i4.name == "rtn_int4" && i4.bits == 4 && i4.group_size == 128));
  CHECK(quant::quant_format_names() == std::vector<std::string>{"rtn_int8", "rtn_int6", "rtn_int4", "awq_int8", "awq_int4"});
  CHECK_THROWS_WITH(quant::parse_quant_format("int4"), Catch::Contains("\"int4\"") && Catch::Contains("rtn_int4"));
  // ceil(cols * bits / 8)
  CHECK(quant::packed_cols(5, 8) == 5);
  CHECK(quant::packed_cols(5, 4) == 3);   // 20 bits
  CHECK(quant::packed_cols(4, 6) == 3);   // 24 bits
  CHECK(quant::packed_cols(5, 6) == 4);   // 30 bits
  CHECK(quant::packed_cols(3, 3) == 2);   // 9 bits
  CHECK(quant::packed_cols(127, 7) == 112);  // 889 bits
  CHECK(quant::packed_cols(1, 2) == 1);
  CHECK(quant::packed_cols(0, 4) == 0);
}

TEST_CASE("pack_codes: bytes worked out by hand", "[packed_quant][unit]") {
  // 8 bits: one byte per code.
  CHECK(to_vec(quant::pack_codes(codes_row({0, 1, 127, 128, 255}), 8)) == std::vector<int64_t>{0, 1, 127, 128, 255});
  // 4 bits: byte i = q[2i] | q[2i+1] << 4; 1 | 2 << 4 = 0x21, 3 | 4 << 4 = 0x43, 15 alone = 0x0F.
  CHECK(to_vec(quant::pack_codes(codes_row({1, 2, 3, 4, 15}), 4)) == std::vector<int64_t>{0x21, 0x43, 0x0F});
  // Rows pad separately: [1, 2, 3] -> 0x21, 0x03; [4, 5, 6] -> 0x54, 0x06.
  auto two = at::tensor(std::vector<int64_t>{1, 2, 3, 4, 5, 6}, at::kLong).view({2, 3});
  auto p2 = quant::pack_codes(two, 4);
  CHECK(p2.sizes() == at::IntArrayRef({2, 2}));
  CHECK(to_vec(p2) == std::vector<int64_t>{0x21, 0x03, 0x54, 0x06});
  // 6 bits, codes [1, 2, 3, 4, 63] (30 bits):
  //   byte 0 = bits 0-7   = 1 | (2 & 3) << 6        = 0x81
  //   byte 1 = bits 8-15  = (2 >> 2) | (3 & 15) << 4 = 0x30
  //   byte 2 = bits 16-23 = (3 >> 4) | 4 << 2        = 0x10
  //   byte 3 = bits 24-31 = 63 (bits 30, 31 padding) = 0x3F
  CHECK(to_vec(quant::pack_codes(codes_row({1, 2, 3, 4, 63}), 6)) == std::vector<int64_t>{0x81, 0x30, 0x10, 0x3F});
  // [63, 0, 63, 0]: 0x3F, (63 & 15) << 4 = 0xF0, 63 >> 4 = 0x03.
  CHECK(to_vec(quant::pack_codes(codes_row({63, 0, 63, 0}), 6)) == std::vector<int64_t>{0x3F, 0xF0, 0x03});
  // [0, 63, 0, 63]: (63 & 3) << 6 = 0xC0, 63 >> 2 = 0x0F, 63 << 2 = 0xFC.
  CHECK(to_vec(quant::pack_codes(codes_row({0, 63, 0, 63}), 6)) == std::vector<int64_t>{0xC0, 0x0F, 0xFC});
  // 3 bits [7, 0, 5]: 7 | 0 << 3 | (5 & 3) << 6 = 0x47, 5 >> 2 = 0x01.
  CHECK(to_vec(quant::pack_codes(codes_row({7, 0, 5}), 3)) == std::vector<int64_t>{0x47, 0x01});
  // 2 bits [1, 2, 3, 0, 3]: 1 | 2 << 2 | 3 << 4 | 0 << 6 = 0x39, then 0x03.
  CHECK(to_vec(quant::pack_codes(codes_row({1, 2, 3, 0, 3}), 2)) == std::vector<int64_t>{0x39, 0x03});

  // The same bytes unpack to the same codes, whatever the input's integer dtype.
  auto p6 = quant::pack_codes(codes_row({1, 2, 3, 4, 63}).to(at::kInt), 6);
  CHECK(p6.scalar_type() == at::kByte);
  CHECK(to_vec(quant::unpack_codes(p6, 6, 5)) == std::vector<int64_t>{1, 2, 3, 4, 63});
  CHECK(quant::unpack_codes(p6, 6, 5).scalar_type() == at::kByte);
  // 8 bits from uint8 codes: a copy, not the caller's storage.
  auto c8 = codes_row({9, 8, 7}).to(at::kByte);
  auto p8 = quant::pack_codes(c8, 8);
  c8.fill_(0);
  CHECK(to_vec(p8) == std::vector<int64_t>{9, 8, 7});

  CHECK_THROWS_WITH(quant::pack_codes(codes_row({0, 16}), 4), Catch::Contains("[0, 15]"));
  CHECK_THROWS_AS(quant::pack_codes(codes_row({-1, 0}), 4), std::invalid_argument);
  CHECK_THROWS_AS(quant::pack_codes(codes_row({0, 256}), 8), std::invalid_argument);
  CHECK_THROWS_AS(quant::pack_codes(at::zeros({2, 3}), 4), std::invalid_argument);  // float codes
  CHECK_THROWS_AS(quant::pack_codes(at::zeros({3}, at::kLong), 4), std::invalid_argument);
  CHECK_THROWS_AS(quant::pack_codes(codes_row({0, 1}), 1), std::invalid_argument);
  CHECK_THROWS_AS(quant::pack_codes(codes_row({0, 1}), 9), std::invalid_argument);
  CHECK_THROWS_AS(quant::unpack_codes(p6, 6, 6), std::invalid_argument);  // 6 codes need 5 bytes
  CHECK_THROWS_AS(quant::unpack_codes(p6.to(at::kInt), 6, 5), std::invalid_argument);
}

TEST_CASE("pack/unpack round trips for odd sizes, 2 to 8 bits, against a bit-by-bit packer", "[packed_quant][unit]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  for (int bits = 2; bits <= 8; ++bits) {
    for (int64_t cols : {1, 3, 5, 127, 129, 130}) {
      INFO(bits << " bits, " << cols << " columns");
      auto codes = at::randint(0, int64_t{1} << bits, {3, cols}, gen, at::TensorOptions().dtype(at::kLong));
      codes[0].fill_((int64_t{1} << bits) - 1);  // all ones: every used bit set
      codes[1][0] = 0;
      auto packed = quant::pack_codes(codes, bits);
      REQUIRE(packed.scalar_type() == at::kByte);
      REQUIRE(packed.sizes() == at::IntArrayRef({3, (cols * bits + 7) / 8}));
      for (int64_t r = 0; r < 3; ++r) {
        const auto row = to_vec(codes[r]);
        const auto want = reference_pack_row(row, bits);
        CHECK(to_vec(packed[r]) == std::vector<int64_t>(want.begin(), want.end()));
      }
      auto back = quant::unpack_codes(packed, bits, cols);
      CHECK(back.scalar_type() == at::kByte);
      CHECK(at::equal(back.to(at::kLong), codes));
      // Non-contiguous input packs the same.
      auto wide = at::cat({codes, codes}, 1).narrow(1, cols, cols);
      CHECK(at::equal(quant::pack_codes(wide, bits), packed));
    }
  }
}

TEST_CASE("quantize_tensor on hand-computed rows (4, 6 and 8 bits, short last group)", "[packed_quant][unit]") {
  const auto w = float_rows({{-1, 0, 0.25f, 2}});
  SECTION("rtn_int4") {
    // xmin -1, xmax 2: 3/15 = 0.2 lies between fp16 1638/8192 and 1639/8192, so
    // scale = 1639/8192 = 0.2000732; zero = round(1 / scale) = round(4.998) = 5;
    // w / scale = -4.998, 0, 1.2495, 9.9963 -> -5, 0, 1, 10; q = 0, 5, 6, 15;
    // bytes 0 | 5 << 4 = 0x50, 6 | 15 << 4 = 0xF6.
    const auto q = quant::quantize_tensor(w, quant::parse_quant_format("rtn_int4"));
    CHECK(q.rows == 1);
    CHECK(q.cols == 4);
    CHECK(q.format.bits == 4);
    CHECK(to_vec(q.qweight) == std::vector<int64_t>{0x50, 0xF6});
    REQUIRE(q.scales.scalar_type() == at::kHalf);
    REQUIRE(q.zeros.scalar_type() == at::kHalf);
    CHECK(q.scales.item<float>() == 1639.0f / 8192);
    CHECK(q.zeros.item<float>() == 5.0f);
    const auto d = quant::dequantize_tensor(q, at::kFloat);
    const double s = 1639.0 / 8192;
    CHECK(to_vec(d.mul(8192)) == std::vector<int64_t>{-5 * 1639, 0, 1639, 10 * 1639});  // exact multiples
    CHECK(d[0][0].item<double>() == -5 * s);
  }
  SECTION("rtn_int6") {
    // 3/63 = 0.047619 * 32768 = 1560.4 -> scale = 1561/32768; zero = round(20.992) = 21;
    // w / scale = -20.992, 0, 5.248, 41.984 -> q = 0, 21, 26, 63; bytes:
    // 0 | (21 & 3) << 6 = 0x40, (21 >> 2) | (26 & 15) << 4 = 5 | 0xA0 = 0xA5, (26 >> 4) | 63 << 2 = 0xFD.
    const auto q = quant::quantize_tensor(w, quant::parse_quant_format("rtn_int6"));
    CHECK(to_vec(q.qweight) == std::vector<int64_t>{0x40, 0xA5, 0xFD});
    CHECK(q.scales.item<float>() == 1561.0f / 32768);
    CHECK(q.zeros.item<float>() == 21.0f);
    CHECK(to_vec(quant::unpack_codes(q.qweight, 6, 4)) == std::vector<int64_t>{0, 21, 26, 63});
  }
  SECTION("rtn_int8") {
    // 3/255 * 131072 = 1542.02 -> scale = 1543/131072; zero = round(84.947) = 85;
    // w / scale = -84.947, 0, 21.237, 169.89 -> q = 0, 85, 106, 255.
    const auto q = quant::quantize_tensor(w, quant::parse_quant_format("rtn_int8"));
    CHECK(to_vec(q.qweight) == std::vector<int64_t>{0x00, 0x55, 0x6A, 0xFF});
    CHECK(q.scales.item<float>() == 1543.0f / 131072);
    CHECK(q.zeros.item<float>() == 85.0f);
  }
  SECTION("groups of 2 at 4 bits, the last group one column") {
    // [-1, 2 | 3, 6 | 0.3]:
    //  g0: as above with range 3: scale 1639/8192, zero 5, q = 0, 15;
    //  g1: xmin 0, range 6: 0.4 * 4096 = 1638.4 -> 1639/4096, zero 0; 7.497, 14.995 -> q = 7, 15;
    //  g2: range 0.3: 0.02 * 65536 = 1310.7 -> 1311/65536, zero 0; 14.997 -> q = 15.
    // codes 0, 15, 7, 15, 15 -> bytes 0xF0, 0xF7, 0x0F.
    const auto q = quant::quantize_tensor(float_rows({{-1, 2, 3, 6, 0.3f}}), {"g2", 4, 2});
    CHECK(to_vec(q.qweight) == std::vector<int64_t>{0xF0, 0xF7, 0x0F});
    REQUIRE(q.scales.sizes() == at::IntArrayRef({1, 3}));
    CHECK(q.scales[0][0].item<float>() == 1639.0f / 8192);
    CHECK(q.scales[0][1].item<float>() == 1639.0f / 4096);
    CHECK(q.scales[0][2].item<float>() == 1311.0f / 65536);
    CHECK(to_vec(q.zeros) == std::vector<int64_t>{5, 0, 0});
    // Zero points are +0, never -0 (0x0000 in the stored bytes).
    CHECK(q.zeros.view(at::kShort)[0][1].item<int64_t>() == 0);
  }
  SECTION("a scale exactly representable in fp16 is kept, not stepped up") {
    // [0, 15] at 4 bits: scale 15/15 = 1, zero 0, q = 0, 15: w' = w.
    const auto q = quant::quantize_tensor(float_rows({{0, 15, 7}}), quant::parse_quant_format("rtn_int4"));
    CHECK(q.scales.item<float>() == 1.0f);
    CHECK(to_vec(quant::unpack_codes(q.qweight, 4, 3)) == std::vector<int64_t>{0, 15, 7});
  }
}

TEST_CASE("quantize then dequantize: |w - w'| <= scale / 2 on random and adversarial rows",
          "[packed_quant][numerics]") {
  for (int64_t cols : {1, 5, 130, 300}) {  // 300: int4 groups of 128, 128 and 44
    const auto w = adversarial_rows(cols, 11 + cols);
    const auto wd = w.to(at::kDouble);
    for (const auto& f : all_formats) {
      INFO(f.name << ", " << cols << " columns");
      const auto q = quant::quantize_tensor(w, f);
      const int64_t gc = f.group_size == 0 ? cols : std::min(f.group_size, cols);
      const int64_t groups = (cols + gc - 1) / gc;
      REQUIRE(q.qweight.sizes() == at::IntArrayRef({w.size(0), quant::packed_cols(cols, f.bits)}));
      REQUIRE(q.scales.sizes() == at::IntArrayRef({w.size(0), groups}));
      REQUIRE(q.zeros.sizes() == at::IntArrayRef({w.size(0), groups}));
      const auto z = q.zeros.to(at::kDouble);
      CHECK(at::equal(z, z.round()));
      CHECK(((z >= 0) & (z <= (1 << f.bits) - 1)).all().item<bool>());
      // Each scale is the smallest fp16 >= max(range / L, 2^-24): it is at least
      // that, and the fp16 value just below it is not.
      const auto s = q.scales.to(at::kFloat);
      const auto prev = (q.scales.view(at::kShort) - 1).view(at::kHalf).to(at::kFloat);
      auto padded = at::constant_pad_nd(w, {0, groups * gc - cols}).view({w.size(0), groups, gc});
      auto range = at::amax(padded, {2}).clamp_min(0) - at::amin(padded, {2}).clamp_max(0);
      range = at::where(range == 0, at::full_like(range, 2.0), range);
      const auto need = (range / static_cast<float>((1 << f.bits) - 1)).clamp_min(std::ldexp(1.0f, -24));
      CHECK((s >= need).all().item<bool>());
      CHECK((prev < need).all().item<bool>());

      const auto d = quant::dequantize_tensor(q, at::kFloat).to(at::kDouble);
      REQUIRE(d.sizes() == w.sizes());
      // Within half a step, up to fp32 rounding of w / scale (|w| 2^-23).
      const auto err = (d - wd).abs();
      CHECK((err <= element_scales(q) * 0.5 + wd.abs() * std::ldexp(1.0, -23)).all().item<bool>());
      CHECK(at::equal(d[1], at::zeros({cols}, at::kDouble)));  // a zero row stays zero
      // On the grid: w' / scale is an integer (exact: fp16 scale times an integer <= 255).
      const auto k = d / element_scales(q);
      CHECK(at::equal(k, k.round()));
      // fake_quantize is dequantize(quantize(w)), bit for bit.
      CHECK(at::equal(quant::fake_quantize(w, f), quant::dequantize_tensor(q, at::kFloat)));
    }
  }
}

TEST_CASE("quantize: half-precision inputs and outputs, refused weights", "[packed_quant][numerics]") {
  const auto w = adversarial_rows(300, 5).narrow(0, 0, 8);  // magnitudes fp16 holds
  const auto f = quant::parse_quant_format("rtn_int4");
  for (auto dtype : {at::kHalf, at::kBFloat16}) {
    INFO(c10::toString(dtype));
    const auto wl = w.to(dtype);
    const auto q = quant::quantize_tensor(wl, f);
    const auto fq = quant::fake_quantize(wl, f);
    CHECK(fq.scalar_type() == dtype);
    CHECK(at::equal(fq, quant::dequantize_tensor(q, dtype)));
    // w' is rounded once more to the dtype: relative 2^-11 (fp16) or 2^-8 (bf16).
    const double ulp = dtype == at::kHalf ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
    const auto wd = wl.to(at::kDouble), dd = fq.to(at::kDouble);
    CHECK(((dd - wd).abs() <= element_scales(q) * 0.5 + dd.abs() * ulp + wd.abs() * std::ldexp(1.0, -23))
              .all()
              .item<bool>());
  }
  // fp64 in, fp64 out (computed in fp32).
  CHECK(quant::fake_quantize(w.to(at::kDouble), f).scalar_type() == at::kDouble);
  // A range of 65504 * 255 is the most fp16 scales hold at 8 bits; 2e9 is refused.
  CHECK_NOTHROW(quant::quantize_tensor(float_rows({{0, 1.6e7f}}), quant::parse_quant_format("rtn_int8")));
  CHECK_THROWS_WITH(quant::quantize_tensor(float_rows({{-1e9f, 1e9f}}), quant::parse_quant_format("rtn_int8")),
                    Catch::Contains("fp16"));
  CHECK_THROWS_WITH(quant::fake_quantize(float_rows({{1, NAN}}), f), Catch::Contains("NaN"));
  CHECK_THROWS_AS(quant::quantize_tensor(float_rows({{1, INFINITY}}), f), std::invalid_argument);
  for (float bad : {NAN, INFINITY, -INFINITY}) {  // inside a wide row, inside a later group
    auto wb = adversarial_rows(300, 6);
    wb[4][137] = bad;
    CHECK_THROWS_AS(quant::quantize_tensor(wb, f), std::invalid_argument);
    CHECK_THROWS_AS(quant::fake_quantize(wb, quant::parse_quant_format("rtn_int8")), std::invalid_argument);
  }
  CHECK_THROWS_AS(quant::quantize_tensor(at::ones({4}), f), std::invalid_argument);
  CHECK_THROWS_AS(quant::quantize_tensor(at::ones({2, 2}, at::kLong), f), std::invalid_argument);
  CHECK_THROWS_AS(quant::quantize_tensor(at::ones({2, 0}), f), std::invalid_argument);
  CHECK_THROWS_AS(quant::quantize_tensor(w, {"x", 9, 0}), std::invalid_argument);
  CHECK_THROWS_AS(quant::fake_quantize(w, {"x", 1, 0}), std::invalid_argument);
  CHECK_THROWS_AS(quant::fake_quantize(w, {"x", 4, -1}), std::invalid_argument);
}

TEST_CASE("rtn_int8 codes, scales and zeros equal the formula computed element by element",
          "[packed_quant][numerics]") {
  const auto w = adversarial_rows(130, 3);
  const auto q = quant::quantize_tensor(w, quant::parse_quant_format("rtn_int8"));
  const auto codes = quant::unpack_codes(q.qweight, 8, 130);
  for (int64_t r = 0; r < w.size(0); ++r) {
    INFO("row " << r);
    const auto wr = w[r].contiguous();
    const auto ref = reference_quantize_row({wr.data_ptr<float>(), wr.data_ptr<float>() + 130}, 8);
    CHECK(q.scales[r][0].item<float>() == ref.scale);
    CHECK(q.zeros[r][0].item<float>() == ref.zero);
    CHECK(to_vec(codes[r]) == ref.codes);
    CHECK(to_vec(q.qweight[r]) == ref.codes);  // 8 bits: the codes are the bytes
  }
}

TEST_CASE("make_quantized_tensor checks stored triples and names the tensor", "[packed_quant][unit]") {
  const std::string name = "model.layers.0.mlp.up_proj.weight";
  const auto f = quant::parse_quant_format("rtn_int4");
  const auto w = adversarial_rows(300, 9).narrow(0, 0, 10);
  const auto q = quant::quantize_tensor(w, f);
  const auto ok = quant::make_quantized_tensor(name, q.qweight, q.scales, q.zeros, 10, 300, f);
  CHECK(at::equal(quant::dequantize_tensor(ok, at::kFloat), quant::dequantize_tensor(q, at::kFloat)));
  CHECK(ok.rows == 10);
  CHECK(ok.cols == 300);

  const auto refused = [&](at::Tensor qw, at::Tensor s, at::Tensor z, int64_t rows, int64_t cols,
                           const std::string& part) {
    INFO(part);
    CHECK_THROWS_WITH(quant::make_quantized_tensor(name, qw, s, z, rows, cols, f),
                      Catch::Contains(name) && Catch::Contains(part));
  };
  refused(q.qweight.to(at::kChar), q.scales, q.zeros, 10, 300, "qweight has dtype");
  refused(q.qweight.to(at::kFloat), q.scales, q.zeros, 10, 300, "qweight has dtype");
  refused(q.qweight.narrow(1, 0, 149), q.scales, q.zeros, 10, 300, "qweight has shape [10, 149], expected [10, 150]");
  refused(q.qweight, q.scales, q.zeros, 10, 301, "qweight has shape");  // 301 columns need 151 bytes
  refused(q.qweight, q.scales.to(at::kFloat), q.zeros, 10, 300, "scales has dtype");
  refused(q.qweight, q.scales.to(at::kBFloat16), q.zeros, 10, 300, "scales has dtype");
  refused(q.qweight, q.scales.narrow(1, 0, 2), q.zeros, 10, 300, "scales has shape");
  refused(q.qweight, q.scales, q.zeros.to(at::kFloat), 10, 300, "zeros has dtype");
  refused(q.qweight, q.scales, q.zeros.narrow(0, 0, 9), 10, 300, "zeros has shape");
  refused(q.qweight, q.scales, at::Tensor(), 10, 300, "zeros is missing");
  refused(q.qweight, q.scales, at::full_like(q.zeros, 16), 10, 300, "zeros must be integers in [0, 15]");
  refused(q.qweight, q.scales, at::full_like(q.zeros, -1), 10, 300, "zeros must be integers");
  refused(q.qweight, q.scales, at::full_like(q.zeros, 2.5), 10, 300, "zeros must be integers");
  refused(q.qweight, at::full_like(q.scales, NAN), q.zeros, 10, 300, "scales hold NaN");
  refused(q.qweight, q.scales, q.zeros, 10, 0, "cols >= 1");
  CHECK_THROWS_WITH(quant::make_quantized_tensor(name, q.qweight, q.scales, q.zeros, 10, 300, {"x", 12, 0}),
                    Catch::Contains(name));
  // 8 bits per channel: zero point 255 is valid, 256 is not.
  const auto f8 = quant::parse_quant_format("rtn_int8");
  const auto q8 = quant::quantize_tensor(w, f8);
  CHECK_NOTHROW(
      quant::make_quantized_tensor(name, q8.qweight, q8.scales, at::full_like(q8.zeros, 255), 10, 300, f8));
  CHECK_THROWS_WITH(
      quant::make_quantized_tensor(name, q8.qweight, q8.scales, at::full_like(q8.zeros, 256), 10, 300, f8),
      Catch::Contains(name) && Catch::Contains("[0, 255]"));
}

TEST_CASE("QuantizedTensor::nbytes counts codes, scales and zeros", "[packed_quant][unit]") {
  const auto w = adversarial_rows(300, 1).narrow(0, 0, 10);
  // int8: 10 x 300 codes + 10 x 1 x 2 bytes of scales + as much for zeros.
  CHECK(quant::quantize_tensor(w, quant::parse_quant_format("rtn_int8")).nbytes() == 3000 + 20 + 20);
  // int6: 10 x 225 + 20 + 20.
  CHECK(quant::quantize_tensor(w, quant::parse_quant_format("rtn_int6")).nbytes() == 2250 + 20 + 20);
  // int4, groups 128, 128, 44: 10 x 150 + 10 x 3 x 2 twice.
  CHECK(quant::quantize_tensor(w, quant::parse_quant_format("rtn_int4")).nbytes() == 1500 + 60 + 60);
}

TEST_CASE("rtn_quantize_model with rtn_int4 on the tiny LLaMA: within the bound, lm_head untouched",
          "[packed_quant][model]") {
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  std::map<std::string, at::Tensor> before;
  for (const auto& info : lm->linears()) {
    for (const auto& [n, t] : lm->linear(info.name).state()) before[info.name + "." + n] = t.clone();
  }
  std::map<std::string, at::Tensor> others_before;
  for (const auto& [n, t] : lm->other_tensors()) others_before[n] = t.clone();

  const auto f = quant::parse_quant_format("rtn_int4");
  SECTION("every decoder weight quantized, nothing else") {
    CHECK(quant::rtn_quantize_model(*lm, f) == 14);  // 2 layers x 7 Linears
    int64_t changed = 0;
    for (const auto& info : lm->linears()) {
      for (const auto& [n, t] : lm->linear(info.name).state()) {
        const auto key = info.name + "." + n;
        INFO(key);
        const auto& orig = before.at(key);
        if (info.layer < 0) {
          CHECK(at::equal(t, orig));  // lm_head
          continue;
        }
        REQUIRE(t.dim() == 2);
        ++changed;
        CHECK_FALSE(at::equal(t, orig));
        CHECK(at::equal(t, quant::fake_quantize(orig, f)));
        // The rows here (32 or 48 columns) are one group each. The bound from the
        // original row alone: scale <= max(range / 15, 2^-24) * (1 + 2^-10)
        // (rounding up to fp16), and |w - w'| <= scale / 2 (+ fp32 rounding).
        const auto x = orig.to(at::kDouble);
        const auto range = std::get<0>(x.max(1)).clamp_min(0) - std::get<0>(x.min(1)).clamp_max(0);
        const auto bound = (range / 15).clamp_min(std::ldexp(1.0, -24)) * (1 + std::ldexp(1.0, -10)) * 0.5;
        const auto err = (t.to(at::kDouble) - x).abs();
        CHECK((err <= bound.unsqueeze(1) + x.abs() * std::ldexp(1.0, -23)).all().item<bool>());
        for (int64_t r = 0; r < t.size(0); ++r) CHECK(std::get<0>(at::_unique(t[r])).numel() <= 16);
      }
    }
    CHECK(changed == 14);
    for (const auto& [n, t] : lm->other_tensors()) {
      INFO(n);
      CHECK(at::equal(t, others_before.at(n)));
    }
  }
  SECTION("a weight that cannot be quantized is named, and nothing changes") {
    {
      c10::InferenceMode guard;  // the model's tensors may be inference tensors
      for (auto& [n, t] : lm->linear("model.layers.1.mlp.down_proj").state()) {
        if (t.dim() == 2) t[0][0] = NAN;
      }
    }
    CHECK_THROWS_WITH(quant::rtn_quantize_model(*lm, f), Catch::Contains("model.layers.1.mlp.down_proj"));
    CHECK(at::equal(lm->linear("model.layers.0.self_attn.q_proj").reconstruct_weight(),
                    before.at("model.layers.0.self_attn.q_proj.weight")));
    CHECK_THROWS_AS(quant::rtn_quantize_model(*lm, QuantFormat{"x", 1, 0}), std::invalid_argument);
  }
}

TEST_CASE("packed quantization on CUDA gives the CPU's bytes", "[packed_quant][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  const auto w = adversarial_rows(300, 21);
  for (const auto& f : all_formats) {
    INFO(f.name);
    const auto qc = quant::quantize_tensor(w, f);
    const auto qg = quant::quantize_tensor(w.cuda(), f);
    CHECK(qg.qweight.is_cuda());
    CHECK(at::equal(qg.qweight.cpu(), qc.qweight));
    CHECK(at::equal(qg.scales.cpu(), qc.scales));
    CHECK(at::equal(qg.zeros.cpu(), qc.zeros));
    CHECK(at::equal(quant::dequantize_tensor(qg, at::kFloat).cpu(), quant::dequantize_tensor(qc, at::kFloat)));
    CHECK(at::equal(quant::fake_quantize(w.cuda(), f).cpu(), quant::fake_quantize(w, f)));
    CHECK(at::equal(quant::unpack_codes(qg.qweight, f.bits, 300).cpu(),
                    quant::unpack_codes(qc.qweight, f.bits, 300)));
  }
}

TEST_CASE("PackedLinear computes the dequantized layer: CPU reference path", "[packed_quant]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const auto w = at::randn({40, 256}, gen);
  const auto b = at::randn({40}, gen);
  const auto x = at::randn({3, 5, 256}, gen);
  for (const std::string name : {"rtn_int8", "rtn_int4"}) {
    const auto q = quant::quantize_tensor(w, quant::parse_quant_format(name));
    quant::PackedLinear layer(q, b);
    CHECK_FALSE(layer.fused_for(x));
    CHECK(layer.kind() == "dense");
    CHECK(layer.weight_params() == 40 * 256);
    CHECK(layer.packed_bytes() == q.nbytes());
    CHECK(layer.packed().qweight.scalar_type() == at::kByte);
    CHECK(at::equal(layer.forward(x), at::linear(x, quant::dequantize_tensor(q, at::kFloat), b)));
    CHECK(at::equal(layer.reconstruct_weight(), quant::dequantize_tensor(q, at::kFloat)));
  }
  quant::QuantizedTensor bad = quant::quantize_tensor(w, quant::parse_quant_format("rtn_int4"));
  CHECK_THROWS_WITH(quant::PackedLinear(bad, at::zeros({7})), Catch::Matchers::Contains("bias of 7 values"));
}

TEST_CASE("pack_slot keeps dense, SVD and CUR layers packed and computes their dequantized factors",
          "[packed_quant]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(15);
  const auto f = quant::parse_quant_format("rtn_int4");
  auto deq = [&](const at::Tensor& w) { return quant::dequantize_tensor(quant::quantize_tensor(w, f), at::kFloat); };
  const auto x = at::randn({3, 64}, gen);
  const auto w = at::randn({40, 64}, gen), b = at::randn({40}, gen);
  const auto a = at::randn({40, 12}, gen), bb = at::randn({12, 64}, gen);
  const auto c = at::randn({40, 12}, gen), u = at::randn({12, 12}, gen), r = at::randn({12, 64}, gen);

  const auto dense = quant::pack_slot(cur4llm::model::DenseLinear(w, b), f);
  CHECK(dense->kind() == "dense");
  CHECK(dynamic_cast<const quant::PackedLinear*>(dense.get()) != nullptr);
  CHECK(at::allclose(dense->forward(x), at::linear(x, deq(w), b), 1e-5, 1e-5));

  const auto svd = quant::pack_slot(cur4llm::compress::SVDLinear(a, bb, b), f);
  const auto* svd_factors = dynamic_cast<const quant::PackedFactors*>(svd.get());
  REQUIRE(svd_factors != nullptr);
  CHECK(svd->kind() == "svd");
  CHECK(svd_factors->fields().at("rank") == "12");
  CHECK(svd->weight_params() == 40 * 12 + 12 * 64);
  CHECK(at::allclose(svd->forward(x), at::linear(at::linear(x, deq(bb)), deq(a), b), 1e-5, 1e-5));
  CHECK(at::allclose(svd->reconstruct_weight(), at::matmul(deq(a), deq(bb)), 1e-5, 1e-5));
  std::vector<std::string> names;
  for (const auto& [name, t] : svd->state()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"BLinear.weight", "ALinear.weight", "ALinear.bias"});

  const auto rows = at::arange(12, at::kLong) * 3, cols = at::arange(12, at::kLong) * 5;
  const cur4llm::compress::CURLinear cur_slot(c, u, r, at::Tensor(), rows, cols);
  const auto cur = quant::pack_slot(cur_slot, f);
  CHECK(cur->kind() == "cur");
  const auto& cur_factors = dynamic_cast<const quant::PackedFactors&>(*cur);
  CHECK(cur_factors.fields().at("folded") == "false");
  CHECK(cur_factors.fields().at("indices") == "true");
  std::map<std::string, at::Tensor> cur_state;
  for (const auto& [name, t] : cur->state()) cur_state[name] = t;
  CHECK(cur_state.size() == 5);  // R, U, C and the indices, no bias
  CHECK(at::equal(cur_state.at("row_indices"), rows));
  CHECK(at::equal(cur_state.at("col_indices"), cols));
  CHECK(at::allclose(cur->forward(x), at::linear(at::linear(at::linear(x, deq(r)), deq(u)), deq(c)), 1e-4, 1e-4));

  CHECK_THROWS_WITH(quant::pack_slot(cur4llm::model::DenseLinear(w, b), quant::parse_quant_format("awq_int4")),
                    Catch::Contains("input scales"));
  // Factors whose shapes do not chain are refused.
  CHECK_THROWS_WITH(quant::PackedFactors("svd", {}, {{"B", std::make_shared<cur4llm::model::DenseLinear>(bb, at::Tensor())},
                                                      {"A", std::make_shared<cur4llm::model::DenseLinear>(w, b)}},
                                         "bias"),
                    Catch::Contains("takes 64 features"));
}

TEST_CASE("CUDA: the fused packed product for any shape: partial groups, odd ranks, inputs off 16 bytes",
          "[packed_quant][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(14);
  // 200 columns: groups of 128 + 72 (the sliced kernel, 8 columns a lane); 203: no multiple of 8, an
  // odd int4 row (the column kernel); 1790: a factorized layer's rank; 4360: 8 columns a lane over
  // several passes, the last one partial; 5152: 32 columns a lane, several passes, a last group of 32.
  for (const int64_t cols : {200, 203, 1790, 4360, 5152}) {
    const auto w = at::randn({70, cols}, gen);
    const auto b = at::randn({70}, gen);
    for (const std::string name : {"rtn_int8", "rtn_int4"}) {
      auto q = quant::quantize_tensor(w, quant::parse_quant_format(name));
      for (auto* part : {&q.qweight, &q.scales, &q.zeros}) *part = part->cuda();
      for (const auto dtype : {at::kFloat, at::kBFloat16}) {
        const double tol = dtype == at::kFloat ? 1e-4 : 1.5e-1;
        quant::PackedLinear layer(q, b.to(at::kCUDA, dtype));
        const auto deq = quant::dequantize_tensor(q, dtype);
        for (const int64_t tokens : {1, 2, 3, 5, 16}) {
          DYNAMIC_SECTION(cols << " " << name << " " << c10::toString(dtype) << " tokens " << tokens) {
            // x starts one element past an aligned start: the sliced kernel needs 16-byte rows.
            const auto storage = at::randn({tokens * cols + 1}, gen).to(at::kCUDA, dtype);
            const auto shifted = storage.narrow(0, 1, tokens * cols).view({tokens, cols});
            CHECK(layer.fused_for(shifted));
            const auto want = at::linear(shifted, deq, layer.bias()).to(at::kFloat);
            const double bound = tol * (1 + want.abs().max().item<double>() / 10);
            CHECK((layer.forward(shifted).to(at::kFloat) - want).abs().max().item<double>() <= bound);
            CHECK((layer.forward(shifted.clone()).to(at::kFloat) - want).abs().max().item<double>() <= bound);
          }
        }
      }
    }
  }
}

TEST_CASE("CUDA: the fused packed product equals the dequantized layer's", "[packed_quant][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(12);
  const auto w = at::randn({300, 512}, gen);  // 300 rows: a partial last block
  const auto b = at::randn({300}, gen);
  const auto column_scales = at::rand({512}, gen).add_(0.5);  // activation-aware formats: multipliers in [0.5, 1.5)
  for (const std::string name : {"rtn_int8", "rtn_int4", "awq_int8", "awq_int4"}) {
    const auto format = quant::parse_quant_format(name);
    const auto q = quant::quantize_tensor(w, format, format.activation_aware ? column_scales : at::Tensor());
    quant::QuantizedTensor qc = q;
    for (auto* part : {&qc.qweight, &qc.scales, &qc.zeros, &qc.input_scales}) {
      if (part->defined()) *part = part->cuda();
    }
    for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
      for (const bool with_bias : {false, true}) {
        const auto bias = with_bias ? b.to(at::kCUDA, dtype) : at::Tensor();
        quant::PackedLinear layer(qc, bias);
        const auto deq = quant::dequantize_tensor(qc, dtype);
        for (const int64_t tokens : {1, 2, 3, 8, 9, 16, 17}) {
          DYNAMIC_SECTION(name << " " << c10::toString(dtype) << " bias " << with_bias << " tokens " << tokens) {
            const auto x = at::randn({tokens, 512}, gen).to(at::kCUDA, dtype);
            CHECK(layer.fused_for(x) == (tokens <= 16));
            const auto got = layer.forward(x).to(at::kFloat);
            const auto want = at::linear(x, deq, bias).to(at::kFloat);
            // The kernel sums float weights, the reference weights rounded to dtype; one rounding to dtype each.
            const double tol = dtype == at::kFloat ? 1e-4 : (dtype == at::kHalf ? 2e-2 : 1.5e-1);
            CHECK((got - want).abs().max().item<double>() <= tol * (1 + want.abs().max().item<double>() / 10));
          }
        }
      }
    }
  }
}

TEST_CASE("CUDA: a prefill multiplies the packed weight rebuilt in one launch, bit for bit dequantize_tensor's",
          "[packed_quant][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  test::KernelScope kernels{{util::Kernel::packed_prefill, true}};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(31);
  // 517 columns: int4 rows end in half a byte and the last group of 128 is partial.
  for (const int64_t cols : {512, 517}) {
    const auto w = at::randn({70, cols}, gen);
    const auto b = at::randn({70}, gen);
    const auto column_scales = at::rand({cols}, gen).add_(0.5);
    for (const std::string name : {"rtn_int8", "rtn_int4", "awq_int8", "awq_int4"}) {
      const auto format = quant::parse_quant_format(name);
      auto q = quant::quantize_tensor(w, format, format.activation_aware ? column_scales : at::Tensor());
      for (auto* part : {&q.qweight, &q.scales, &q.zeros, &q.input_scales}) {
        if (part->defined()) *part = part->cuda();
      }
      for (const auto dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
        DYNAMIC_SECTION(name << ", " << cols << " cols, " << c10::toString(dtype)) {
          const auto bias = b.to(at::kCUDA, dtype);
          quant::PackedLinear layer(q, bias);
          const auto x = at::randn({40, cols}, gen).to(at::kCUDA, dtype);  // more tokens than the fused products take
          REQUIRE_FALSE(layer.fused_for(x));
          CHECK(at::equal(layer.forward(x), at::linear(x, quant::dequantize_tensor(q, dtype), bias)));
        }
      }
    }
  }
}

namespace {

// Every Linear of the decoder layers packed as `format_of(name)` names it; the head stays as it is.
template <typename FormatOf>
void pack_decoder(model::CausalLM& lm, FormatOf&& format_of) {
  for (const auto& info : lm.linears()) {
    if (info.layer < 0) continue;
    lm.replace_linear(info.name, quant::pack_slot(lm.linear(info.name), quant::parse_quant_format(format_of(info.name))));
  }
}

}  // namespace

TEST_CASE("group_projections stacks packed q/k/v and gate/up of one format, logits as before", "[packed_quant]") {
  for (const std::string format : {"rtn_int8", "rtn_int4"}) {
    INFO(format);
    auto lm = model::CausalLM::load(model_dir("llama_gqa"));
    pack_decoder(*lm, [&](const std::string&) { return format; });
    c10::InferenceMode guard;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(8);
    const auto ids = at::randint(lm->config().vocab_size, {2, 9}, gen, at::TensorOptions().dtype(at::kLong));
    const auto before = lm->forward(ids);
    std::map<std::string, at::Tensor> codes;
    for (const auto& info : lm->linears()) {
      if (const auto* p = dynamic_cast<const quant::PackedLinear*>(&lm->linear(info.name))) {
        codes[info.name] = p->packed().qweight.clone();
      }
    }
    REQUIRE(lm->group_projections() == 2 * lm->config().num_layers);
    for (const auto& [name, q] : codes) {
      const auto* p = dynamic_cast<const quant::PackedLinear*>(&lm->linear(name));
      REQUIRE(p);
      CHECK(at::equal(p->packed().qweight, q));  // each slot reads the same codes, now part of its group's
    }
    const auto& q0 = dynamic_cast<const quant::PackedLinear&>(lm->linear("model.layers.0.self_attn.q_proj"));
    const auto& k0 = dynamic_cast<const quant::PackedLinear&>(lm->linear("model.layers.0.self_attn.k_proj"));
    CHECK(k0.packed().qweight.is_alias_of(q0.packed().qweight));
    // The stacked gate/up computes the gated activation in one call (the LLaMA layer takes it),
    // as silu(gate) * up of the separate slots.
    const auto& gate0 = lm->linear("model.layers.0.mlp.gate_proj");
    const auto& up0 = lm->linear("model.layers.0.mlp.up_proj");
    const auto x = at::randn({3, lm->config().hidden_size}, gen);
    const auto stacked_gate = gate0.stacked_with({&up0});
    REQUIRE(stacked_gate);
    const auto gated = stacked_gate->silu_gate(x);
    REQUIRE(gated.defined());
    CHECK(gated.sizes() == at::IntArrayRef{3, gate0.out_features()});
    CHECK(at::allclose(gated, at::silu(gate0.forward(x)) * up0.forward(x), 1e-6, 1e-6));
    CHECK(at::allclose(lm->forward(ids), before, 1e-5, 1e-5));
  }
  // q packed at 8 bits, k and v at 4: the attention projections cannot stack; the MLPs can.
  auto lm = model::CausalLM::load(model_dir("llama_gqa"));
  pack_decoder(*lm, [](const std::string& name) {
    return name.find("q_proj") != std::string::npos ? "rtn_int8" : "rtn_int4";
  });
  CHECK(lm->group_projections() == lm->config().num_layers);
}

TEST_CASE("CUDA: stacked packed projections decode as the unstacked ones", "[packed_quant][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  model::LoadOptions o;
  o.device = c10::Device(c10::kCUDA);
  o.dtype = at::kBFloat16;
  auto plain = model::CausalLM::load(model_dir("llama_gqa"), o);
  auto stacked = model::CausalLM::load(model_dir("llama_gqa"), o);
  for (auto* lm : {plain.get(), stacked.get()}) pack_decoder(*lm, [](const std::string&) { return "rtn_int4"; });
  REQUIRE(stacked->group_projections() == 2 * stacked->config().num_layers);
  c10::InferenceMode guard;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  const auto ids = at::randint(plain->config().vocab_size, {2, 12}, gen, at::TensorOptions().dtype(at::kLong)).cuda();
  model::KVCache a(2, 16, plain->device()), b(2, 16, stacked->device());
  // The prefill, then single-token steps through the fused packed kernel.
  auto want = plain->forward_cached(ids.narrow(1, 0, 8), a).to(at::kFloat);
  auto got = stacked->forward_cached(ids.narrow(1, 0, 8), b).to(at::kFloat);
  CHECK((got - want).abs().max().item<double>() <= 2e-2 * (1 + want.abs().max().item<double>()));
  for (int64_t t = 8; t < 12; ++t) {
    want = plain->forward_cached(ids.narrow(1, t, 1), a).to(at::kFloat);
    got = stacked->forward_cached(ids.narrow(1, t, 1), b).to(at::kFloat);
    INFO("step " << t);
    CHECK((got - want).abs().max().item<double>() <= 2e-2 * (1 + want.abs().max().item<double>()));
  }
}

TEST_CASE("CUDA: int4 on the tensor cores: products, a residual added in place, the SiLU gate of stacked gate/up",
          "[packed_quant][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  auto gen = at::make_generator<at::CPUGeneratorImpl>(21);
  // A packed int4 weight on CUDA and its exact values in float64 (an fp16 scale times a small
  // integer is exact in float).
  auto packed = [&](int64_t rows, int64_t cols, int64_t group) {
    auto format = quant::parse_quant_format("rtn_int4");
    format.group_size = group;
    auto q = quant::quantize_tensor(at::randn({rows, cols}, gen), format);
    for (auto* part : {&q.qweight, &q.scales, &q.zeros}) *part = part->cuda();
    return std::make_pair(q, quant::dequantize_tensor(q, at::kFloat).to(at::kDouble));
  };
  // The input's norm in the launch is checked beside the plain product.
  test::KernelScope kernels{{util::Kernel::norm_in_product, true}};
  // 128 columns: one chunk of the kernel; 384: three and 1024: eight (fewer than a block's 16
  // warps); 2816: 22, one or two a warp; 11008: 86, five or six a warp. Groups of 128 and 256 (a
  // chunk's columns share a scale; 384 ends in half a group of 256).
  for (const int64_t cols : {128, 384, 1024, 2816, 11008}) {
    for (const int64_t group : {128, 256}) {
      // 48 rows: a block and a half (32 rows each); 70: the last block repeats rows it does not write.
      for (const int64_t rows : {48, 70}) {
        const auto [q, deq] = packed(rows, cols, group);
        const auto b = at::randn({rows}, gen);
        for (const auto dtype : {at::kHalf, at::kBFloat16}) {
          for (const bool with_bias : {false, true}) {
            const auto bias = with_bias ? b.to(at::kCUDA, dtype) : at::Tensor();
            quant::PackedLinear layer(q, bias);
            for (const int64_t tokens : {1, 3, 8}) {
              {  // one pass through the loops (sections would repeat every quantization above them)
                INFO(cols << " cols, group " << group << ", " << rows << " rows, " << c10::toString(dtype)
                          << ", bias " << with_bias << ", tokens " << tokens);
                const auto x = at::randn({tokens, cols}, gen).to(at::kCUDA, dtype);
                auto exact = at::matmul(x.to(at::kDouble), deq.t());
                if (with_bias) exact = exact + bias.to(at::kDouble);
                test::check_forward_and_add(layer, x, exact, gen);
                const model::InputNorm norm{(at::rand({cols}, gen) + 0.5).to(at::kCUDA, dtype), 1e-5};
                test::check_normed(layer, x, norm, deq, bias, false);
              }
            }
          }
        }
      }
    }
  }
  // The SiLU gate of a stacked [gate; up] weight: 48 and 40 rows each (the second a partial tile).
  for (const int64_t half : {48, 40}) {
    const auto [q, deq] = packed(2 * half, 2816, 128);
    quant::PackedLinear layer(q, at::Tensor());
    for (const auto dtype : {at::kHalf, at::kBFloat16}) {
      for (const int64_t tokens : {1, 5, 8}) {
        {
          INFO("gate of " << half << " rows, " << c10::toString(dtype) << ", tokens " << tokens);
          const auto x = at::randn({tokens, 2816}, gen).to(at::kCUDA, dtype);
          test::check_silu_gate(layer, x, at::matmul(x.to(at::kDouble), deq.t()));
          const model::InputNorm norm{(at::rand({2816}, gen) + 0.5).to(at::kCUDA, dtype), 1e-6};
          test::check_normed(layer, x, norm, deq, at::Tensor(), true);
        }
      }
      // More tokens than the tensor cores' 8: no fused gate; the caller splits.
      CHECK_FALSE(layer.silu_gate(at::randn({9, 2816}, gen).to(at::kCUDA, dtype)).defined());
    }
    // Float inputs: no fused gate either.
    CHECK_FALSE(layer.silu_gate(at::randn({1, 2816}, gen).cuda()).defined());
  }
}

TEST_CASE("CUDA: a model-sized LLaMA at int4 decodes the same with its projections stacked (SiLU gate, norms inside)",
          "[packed_quant][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  const auto config = model::ModelConfig::from_json(test::kModelSizedLlama, "test config");
  model::LoadOptions o;
  o.device = c10::Device(c10::kCUDA);
  o.dtype = at::kBFloat16;
  auto lm = model::CausalLM::random(config, o, 7);
  pack_decoder(*lm, [](const std::string&) { return "rtn_int4"; });
  c10::InferenceMode guard;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(10);
  const auto ids = at::randint(config.vocab_size, {2, 12}, gen, at::TensorOptions().dtype(at::kLong)).cuda();
  // The prefill (16 tokens: the scalar packed kernel), then steps of 2 rows x 1 token (the tensor
  // cores, o_proj and down_proj adding into the residual), first with the projections apart,
  // then stacked (q/k/v one product, the gate in gate/up's launch).
  auto decode = [&] {
    std::vector<at::Tensor> logits;
    model::KVCache cache(2, 16, lm->device());
    logits.push_back(lm->forward_cached(ids.narrow(1, 0, 8), cache).to(at::kFloat));
    for (int64_t t = 8; t < 12; ++t) logits.push_back(lm->forward_cached(ids.narrow(1, t, 1), cache).to(at::kFloat));
    return logits;
  };
  test::KernelScope kernels{{util::Kernel::norm_in_product, false}};
  const auto apart = decode();
  REQUIRE(lm->group_projections() == 2 * config.num_layers);
  const auto stacked = decode();
  // And the input norms inside the stacked products' launches (no norm kernel in a step).
  kernels.set(util::Kernel::norm_in_product, true);
  const auto normed = decode();
  for (size_t i = 0; i < apart.size(); ++i) {
    INFO("pass " << i);
    const double bound = 2e-2 * (1 + apart[i].abs().max().item<double>());
    CHECK((stacked[i] - apart[i]).abs().max().item<double>() <= bound);
    CHECK((normed[i] - apart[i]).abs().max().item<double>() <= bound);
  }
}
