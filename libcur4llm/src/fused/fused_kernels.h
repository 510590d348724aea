#pragma once
// Internal: launchers of cur4llm's CUDA kernels, in plain C++ types so that
// this header is shared by nvcc (fused_kernels.cu) and the host compiler
// (fused_ops_cuda.cpp). Each returns a cudaError_t value (0: launched).
//
// Element types: 0 = float, 1 = half, 2 = bfloat16. Every kernel computes in
// float and rounds to the element type where the unfused ATen sequence rounds,
// so that results match that sequence (see fused_ops.h).

#include <cstdint>

namespace cur4llm::fused::kernels {

/// out[r] = logsumexp(logits[r, :]) - logits[r, labels[r]] in float (NaN for a
/// label outside [0, cols)). logits rows are `row_stride` elements apart.
int token_nll(const void* logits, int dtype, int64_t rows, int64_t cols, int64_t row_stride, const int64_t* labels,
              float* out, void* stream);

/// out = w * to_dtype(x * rsqrt(mean(x^2) + eps)) per row of `cols` (LLaMA's RMSNorm).
int rms_norm(const void* x, const void* w, void* out, int dtype, int64_t rows, int64_t cols, float eps, void* stream);

/// Rotary embedding of x [tokens, heads, dim] (each token's heads contiguous,
/// tokens x_token_stride elements apart, 0: heads * dim; token n sits at
/// position n % seq_len, or at positions[n] where given) into out [tokens,
/// heads, dim] (contiguous): out = x * cos + rotate_half(x) * sin with cos/sin
/// (float [tables, table_rows, dim]: head h takes table h / (heads / tables))
/// rounded to the element type, each product and the sum rounded.
int rotary(const void* x, const float* cos, const float* sin, void* out, int dtype, int64_t tokens, int64_t seq_len,
           int64_t heads, int64_t dim, void* stream, const int64_t* positions = nullptr, int64_t tables = 1,
           int64_t table_rows = 0, int64_t x_token_stride = 0);

/// A decoding step's rotary embedding and KV-cache writes in one launch: q [rows, heads, dk]
/// rotated into q_out (contiguous), k [rows, kv_heads, dk] rotated into keys [batch, kv_heads,
/// cap, dk] and v [rows, kv_heads, dv] copied into values [batch, kv_heads, cap, dv], at slots
/// start .. start + tokens - 1 (rows = batch * tokens, row r = token r % tokens of batch row
/// r / tokens, at positions[r]; each row's heads contiguous, rows q_stride, k_stride, v_stride
/// elements apart). cos/sin and tables as rotary's (queries take their KV head's table).
int rotary_step(const void* q, const void* k, const void* v, const float* cos, const float* sin,
                const int64_t* positions, int64_t tables, int64_t table_rows, int dtype, int64_t batch, int64_t tokens,
                int64_t heads, int64_t kv_heads, int64_t dk, int64_t dv, int64_t q_stride, int64_t k_stride,
                int64_t v_stride, void* q_out, void* keys, void* values, int64_t cap, int64_t start, void* stream);

/// LayerNorm per row of `cols`: s = x, or to_dtype(x + y) when y is given
/// (then written to sum_out, which must be given too); out =
/// to_dtype((s - mean) * rstd * w + b) in float (w, b may be null).
int layer_norm(const void* x, const void* y, const void* w, const void* b, void* sum_out, void* out, int dtype,
               int64_t rows, int64_t cols, float eps, void* stream);

/// out = to_dtype(silu(gate)) * up, element-wise (rounded after each op), for gate and up
/// [rows, cols] with rows gate_stride and up_stride elements apart and out [rows, cols] contiguous.
int silu_mul(const void* gate, const void* up, void* out, int dtype, int64_t rows, int64_t cols, int64_t gate_stride,
             int64_t up_stride, void* stream);

/// The most tokens lowrank_forward takes.
constexpr int64_t kLowRankMaxTokens = 8;

/// y [tokens, out] = c (u (r x)) + bias for a few tokens (decoding) in one
/// cooperative launch: r [k, in], u [k, k] or null, c [out, k], bias [out] or
/// null, x [tokens, in], all row-major and of one element type; each product is
/// rounded to that type as at::linear rounds it. scratch holds 2 * tokens * k floats.
int lowrank_forward(const void* x, int64_t tokens, const void* r, const void* u, const void* c, const void* bias,
                    void* y, float* scratch, int dtype, int64_t in, int64_t k, int64_t out, void* stream);

/// The most tokens packed_linear takes (a decoding step of up to 16 sequences).
/// Decoding attention (decode_attention.cu): query rows per KV head and head dims it takes.
constexpr int64_t kDecodeMaxRows = 8;
constexpr int64_t kDecodeMaxHeadDim = 256;

/// Floats of workspace decode_attention needs.
int64_t decode_attention_workspace(int64_t batch, int64_t kv_heads, int64_t rows, int64_t length, int64_t dv);

/// softmax(q k^T * scale + mask) v for q [batch, kv_heads, rows, d] (contiguous) against the first
/// `length` of `cap` slots of keys [batch, kv_heads, cap, d] and values [batch, kv_heads, cap, dv]
/// (contiguous), with the additive mask (element type; -inf: not attended) at
/// mask[b * mask_batch_stride + r * mask_row_stride + s]; out [batch, kv_heads, rows, dv].
/// Every row must attend to at least one slot. Sums in float; the key axis is split over
/// blocks of at least 32 slots, merged by a second kernel. With vector_loads, head dims that are
/// whole 16-byte pieces (up to 32 of them) are read 16 bytes a lane; otherwise, and for other
/// dims, one element a lane.
int decode_attention(const void* q, const void* keys, const void* values, const void* mask, float* workspace,
                     void* out, int dtype, int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length,
                     int64_t d, int64_t dv, float scale, int64_t mask_row_stride, int64_t mask_batch_stride,
                     bool vector_loads, void* stream);

constexpr int64_t kPackedMaxTokens = 16;

/// y [tokens, rows] = x [tokens, cols] w^T + bias for a weight stored packed
/// (quant/packed_quant.h): w[r, c] = scales[r, g] * (q[r, c] - zeros[r, g]) in float,
/// g = c / group (the last group may be partial), codes of `bits` (4 or 8) bits packed
/// little-endian into uint8 rows of ceil(cols * bits / 8) bytes, fp16 scales and zeros
/// [rows, ceil(cols / group)]. Weights are not rounded to the element type
/// (dequantize_tensor rounds them); products are summed in float and rounded once.
/// input_scales (fp16 [cols], or null) multiply column c of w (activation-aware
/// formats). With cols and group multiples of 8, x 16-byte, q 8-byte and
/// input_scales 16-byte aligned, each lane reads 8 columns at a time; any other
/// shape takes a kernel that reads one column at a time. (int4 products of a few
/// tokens are faster on the tensor cores: linear_mma, where it fits.)
int packed_linear(const void* x, int64_t tokens, const uint8_t* q, const void* scales, const void* zeros,
                  const void* bias, const void* input_scales, void* y, int dtype, int bits, int64_t rows,
                  int64_t cols, int64_t group, void* stream);

/// w [rows, cols] (element type dtype) = the packed weight packed_linear takes, rebuilt as
/// dequantize_tensor rebuilds it: (code - zero) * scale in float, times the column's input
/// scale where given, rounded once. bits 4 or 8.
int dequantize_packed(const uint8_t* q, const void* scales, const void* zeros, const void* input_scales, void* w,
                      int dtype, int bits, int64_t rows, int64_t cols, int64_t group, void* stream);

/// The most tokens linear_mma takes (the tensor cores' N).
constexpr int64_t kLinearMmaMaxTokens = 8;

/// A product of a few tokens on the tensor cores (linear_mma.cu), with what may follow it in
/// the same launch: y [tokens, rows] = x [tokens, cols] w^T + bias, plus residual [tokens,
/// rows] where given (it may be y itself), rounded once. w is either packed int4 (q, scales,
/// zeros, group and colmul = input_scales as packed_linear's with bits = 4) or dense
/// [rows, cols] in x's element type (weight, row-major). With silu_pair, w holds a gate
/// projection's rows and then an up projection's, rows / 2 each, and y [tokens, rows / 2] =
/// silu_mul(gate, up), each of the two rounded to the element type first (as silu_mul takes them).
struct MmaLinearArgs {
  const void* x = nullptr;
  const uint8_t* q = nullptr;     ///< packed codes, or null
  const void* weight = nullptr;   ///< dense weight, or null
  const void* scales = nullptr;
  const void* zeros = nullptr;
  const void* bias = nullptr;
  const void* colmul = nullptr;
  const void* residual = nullptr;
  void* y = nullptr;
  int dtype = 0;
  int tokens = 0;
  int64_t rows = 0, cols = 0, group = 0;
  bool silu_pair = false;
  /// An RMSNorm of x inside the product, where given: x is taken as x / sqrt(mean(x^2) + norm_eps)
  /// * norm_weight ([cols], x's type; mean over each token's cols), the norm's weight applied
  /// to x before the product (rounded to the element type) and the token's scale to its sums.
  const void* norm_weight = nullptr;
  float norm_eps = 0.f;
};

/// Whether linear_mma takes these: half or bfloat16, 1..kLinearMmaMaxTokens tokens, cols (and
/// an int4 group) a multiple of 128, x, the weight and colmul 16-byte aligned, a GPU of compute
/// capability 8.0 or later; for int4, CUR4LLM_PACKED_MMA not "0" (which keeps the scalar kernels).
bool linear_mma_fits(const MmaLinearArgs& args);
/// Launches it; the caller has checked linear_mma_fits (both callers do, once per call).
int linear_mma(const MmaLinearArgs& args, void* stream);

}  // namespace cur4llm::fused::kernels
