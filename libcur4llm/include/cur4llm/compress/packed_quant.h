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
/// Quantization per group is PROTOCOL.md's asymmetric min-max RTN: xmin =
/// min(group min, 0), xmax = max(group max, 0) (both zero: -1 and +1), scale =
/// (xmax - xmin) / (2^bits - 1), zero = round(-xmin / scale), q = clamp(round(w /
/// scale) + zero, 0, 2^bits - 1); scale and zero are then stored as fp16 and the
/// codes are computed against the fp16-rounded scale.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// One quantization format.
struct QuantFormat {
  std::string name;        ///< "rtn_int8", "rtn_int6", "rtn_int4"
  int bits = 8;            ///< 2..8
  int64_t group_size = 0;  ///< 0: one group per row (per output channel)
};

/// "rtn_int8" -> {8, per channel}, "rtn_int6" -> {6, per channel}, "rtn_int4" ->
/// {4, groups of 128}; std::invalid_argument listing the names otherwise.
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
  int64_t rows = 0, cols = 0;
  QuantFormat format;
  /// Bytes of the three tensors together.
  int64_t nbytes() const;
};

/// Quantizes a floating 2-d tensor (any float dtype, CPU or CUDA; computed in fp32).
QuantizedTensor quantize_tensor(const at::Tensor& w, const QuantFormat& format);
/// Rebuilds w' = scales * (q - zeros) in `dtype`, on the tensors' device.
at::Tensor dequantize_tensor(const QuantizedTensor& q, c10::ScalarType dtype);
/// Checks a stored triple against `format` and a [rows, cols] shape: dtypes,
/// shapes and zero points within [0, 2^bits); std::invalid_argument naming `name` otherwise.
QuantizedTensor make_quantized_tensor(const std::string& name, at::Tensor qweight, at::Tensor scales,
                                      at::Tensor zeros, int64_t rows, int64_t cols, const QuantFormat& format);

}  // namespace cur4llm::compress
