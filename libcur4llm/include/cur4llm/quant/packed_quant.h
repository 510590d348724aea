#pragma once
/// Real (packed) weight quantization for storage: integer codes packed into
/// bytes plus fp16 scales and zero points, the format that build_acur_repo and
/// quantize write and that the exported modeling code dequantizes at load.
///
/// Format of one 2-d tensor `t` of shape [rows, cols], stored under three names:
///   t.qweight  uint8 [rows, packed_cols(cols, bits)]   codes q in [0, 2^bits - 1]
///   t.scales   fp16  [rows, groups]                     groups = ceil(cols / group_size)
///   t.zeros    fp16  [rows, groups]                     integer zero points
/// and w[r, c] = scales[r, g] * (q[r, c] - zeros[r, g]) with g = c / group_size.
/// group_size == cols (per output channel) for rtn_int8 / rtn_int6; 128 for rtn_int4.
///
/// Packing, row by row: the row's codes form a little-endian bit stream (code j
/// occupies bits [j*bits, (j+1)*bits), least significant bit first) padded with
/// zero bits to whole bytes. So 8 bits: one byte per code; 4 bits: byte i =
/// q[2i] | q[2i+1] << 4; 6 bits: four codes in three bytes.
///
/// Quantization per group is the reference's asymmetric min-max RTN (docs/protocol.md), computed in
/// fp32: xmin = min(group min, 0), xmax = max(group max, 0) (both zero: -1 and
/// +1), and with L = 2^bits - 1:
///   scale = the smallest fp16 value >= max((xmax - xmin) / L, 2^-24)
///   zero  = round(-xmin / scale)                     (an integer in [0, L])
///   q     = clamp(round(w / scale) + zero, 0, L)     (round: halves to even)
/// The codes are computed against the stored (fp16) scale, so w' = scale * (q -
/// zero) is what a reader rebuilds. Rounding the scale up, not to nearest, keeps
/// the grid covering [xmin, xmax]: |w - w'| <= scale / 2 for every element
/// (up to fp32 rounding of w / scale). Padding of a short last group never
/// matters (the bounds include 0). With an fp16 / bf16 result dtype, w' is then
/// rounded once more to that dtype. A group whose scale exceeds fp16's largest
/// value (65504, a range above 65504 * L) and non-finite weights are refused.
///
/// Example (4 bits, one group): w = [-1, 0, 0.25, 2] gives scale = 1639 / 8192
/// (the fp16 value just above 3/15), zero = 5, q = [0, 5, 6, 15], packed bytes
/// [0x50, 0xF6], w' = [-1.0004, 0, 0.2001, 2.0007].
///
/// Activation-aware formats (awq_int8, awq_int4; quant/awq.h) store a fourth tensor
///   t.input_scales  fp16 [cols]   m, one multiplier per input column
/// and w[r, c] = scales[r, g] * (q[r, c] - zeros[r, g]) * m[c]: the codes quantize
/// w / m (fp32) as above, so a column with a small m gets a finer grid. The
/// product is computed in fp32 (correctly rounded), so every reader rebuilds the
/// same w'.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::quant {

/// One quantization format.
struct QuantFormat {
  std::string name;        ///< "rtn_int8", "rtn_int6", "rtn_int4", "awq_int8", "awq_int4"
  int bits = 8;            ///< 2..8
  int64_t group_size = 0;  ///< columns per group; 0 (or >= cols): one group per row (per output channel)
  bool activation_aware = false;  ///< AWQ: a per-column multiplier (input_scales) is stored too
};

/// "rtn_int8" -> {8, per channel}, "rtn_int6" -> {6, per channel}, "rtn_int4" ->
/// {4, groups of 128}, "awq_int8" -> {8, per channel, activation-aware},
/// "awq_int4" -> {4, groups of 128, activation-aware}; std::invalid_argument
/// listing the names otherwise.
QuantFormat parse_quant_format(const std::string& name);
/// The names parse_quant_format knows.
const std::vector<std::string>& quant_format_names();

/// Bytes per row of packed codes: ceil(cols * bits / 8).
int64_t packed_cols(int64_t cols, int bits);

/// Packs codes (any integer dtype, [rows, cols], values in [0, 2^bits)) into
/// uint8 [rows, packed_cols(cols, bits)] as described above. CPU or CUDA.
at::Tensor pack_codes(const at::Tensor& codes, int bits);
/// The inverse: uint8 [rows, packed_cols] -> uint8 [rows, cols].
at::Tensor unpack_codes(const at::Tensor& packed, int bits, int64_t cols);

/// A quantized 2-d tensor in storage form.
struct QuantizedTensor {
  at::Tensor qweight;  ///< uint8 [rows, packed_cols]
  at::Tensor scales;   ///< fp16 [rows, groups]
  at::Tensor zeros;    ///< fp16 [rows, groups]
  at::Tensor input_scales;  ///< fp16 [cols] (activation-aware formats only; undefined otherwise)
  int64_t rows = 0, cols = 0;
  QuantFormat format;
  /// Bytes of the stored tensors together.
  int64_t nbytes() const;
};

/// Quantizes a floating 2-d tensor (any float dtype, CPU or CUDA; computed in fp32).
/// An activation-aware format takes the multipliers `input_scales` (any floating
/// [cols], rounded to fp16, all > 0; undefined: all ones); other formats refuse them.
QuantizedTensor quantize_tensor(const at::Tensor& w, const QuantFormat& format, const at::Tensor& input_scales = {});
/// Rebuilds w' = scales * (q - zeros) (* input_scales) in `dtype`, on the
/// tensors' device (computed in fp32, then converted).
at::Tensor dequantize_tensor(const QuantizedTensor& q, c10::ScalarType dtype);
/// dequantize_tensor(quantize_tensor(w, format), w's dtype), without packing:
/// the in-memory (fake) quantization of a 2-d floating tensor, CPU or CUDA.
at::Tensor fake_quantize(const at::Tensor& w, const QuantFormat& format, const at::Tensor& input_scales = {});
/// Checks a stored triple (and, for an activation-aware format, the
/// input_scales) against `format` and a [rows, cols] shape: dtypes, shapes, one
/// device, finite scales, integer zero points within [0, 2^bits), finite
/// positive input scales; std::invalid_argument naming `name` otherwise.
QuantizedTensor make_quantized_tensor(const std::string& name, at::Tensor qweight, at::Tensor scales,
                                      at::Tensor zeros, int64_t rows, int64_t cols, const QuantFormat& format,
                                      at::Tensor input_scales = {});

}  // namespace cur4llm::quant
