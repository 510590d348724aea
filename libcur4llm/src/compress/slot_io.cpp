// Reading stored slots, and the slot kinds of this library: "dense" (listed
// in an acur repository only when its weight is packed), "cur", "svd",
// "skeleton_row" and "skeleton_col".
#include <cur4llm/compress/slot_io.h>

#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/quant/packed_linear.h>
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/svd_linear.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <initializer_list>
#include <stdexcept>

namespace cur4llm::compress {

std::string int_field(int64_t value) { return std::to_string(value); }
std::string bool_field(bool value) { return value ? "true" : "false"; }

namespace {

// The packed tensor `name` ([rows, cols]) of a slot, checked, on the CPU.
quant::QuantizedTensor read_packed(const model::SlotSpec& spec, const model::SlotTensors& tensors,
                                   const std::string& name, const std::vector<int64_t>& shape) {
  if (shape.size() != 2) {
    throw std::runtime_error(fmt::format("{}: only 2-d tensors can be packed", tensors.describe(name)));
  }
  const quant::QuantFormat format = quant::parse_quant_format(spec.quant_format);
  const int64_t rows = shape[0], cols = shape[1];
  const int64_t group = format.group_size > 0 ? format.group_size : cols;
  const int64_t groups = (cols + group - 1) / group;
  try {
    return quant::make_quantized_tensor(
        name, tensors.stored(name + ".qweight", {rows, quant::packed_cols(cols, format.bits)}),
        tensors.stored(name + ".scales", {rows, groups}), tensors.stored(name + ".zeros", {rows, groups}), rows, cols,
        format, format.activation_aware ? tensors.stored(name + ".input_scales", {cols}) : at::Tensor());
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(fmt::format("{}: {}", tensors.describe(name), e.what()));
  }
}

// The weight or factor `name` as a Linear of its own with `bias`: with keep_packed, a
// packed one stays packed (quant::PackedLinear, on the device); else a DenseLinear.
model::LinearPtr kept_factor(const model::SlotSpec& spec, const model::SlotTensors& t, const std::string& name,
                             const std::vector<int64_t>& shape, const at::Tensor& bias) {
  if (!t.keep_packed() || !spec.packed.count(name)) {
    return std::make_shared<model::DenseLinear>(read_factor(spec, t, name, shape), bias);
  }
  auto q = read_packed(spec, t, name, shape);
  for (auto* part : {&q.qweight, &q.scales, &q.zeros, &q.input_scales}) {
    if (part->defined()) *part = part->to(t.device());
  }
  return std::make_shared<quant::PackedLinear>(std::move(q), bias);
}

// Whether keep_packed keeps this slot's factors packed (some factor is packed).
bool keeps_packed(const model::SlotSpec& spec, const model::SlotTensors& t, std::initializer_list<const char*> names) {
  if (!t.keep_packed()) return false;
  for (const char* n : names) {
    if (spec.packed.count(n)) return true;
  }
  return false;
}

}  // namespace

at::Tensor read_factor(const model::SlotSpec& spec, const model::SlotTensors& tensors, const std::string& name,
                       const std::vector<int64_t>& shape) {
  at::Tensor value;
  if (spec.packed.count(name)) {
    value = quant::dequantize_tensor(read_packed(spec, tensors, name, shape), tensors.dtype());
  } else {
    value = tensors.stored(name, shape);
    if (!at::isFloatingType(value.scalar_type())) {
      throw std::runtime_error(fmt::format("{} is stored as {}, not as floating point", tensors.describe(name),
                                           c10::toString(value.scalar_type())));
    }
  }
  return value.to(tensors.device(), tensors.dtype());
}

at::Tensor read_indices(const model::SlotTensors& tensors, const std::string& name, int64_t count, int64_t bound) {
  auto value = tensors.stored(name, {count});
  if (!at::isIntegralType(value.scalar_type(), /*includeBool=*/false)) {
    throw std::runtime_error(fmt::format("{} must hold integers", tensors.describe(name)));
  }
  value = value.to(at::kLong).contiguous();
  if (count > 0 && (value.min().item<int64_t>() < 0 || value.max().item<int64_t>() >= bound)) {
    throw std::runtime_error(fmt::format("{} has an index outside [0, {})", tensors.describe(name), bound));
  }
  return value;
}

namespace {

// ---------------------------------------------------------------------------------------------
// "dense": y = x W^T + b. Written to an acur repository only when W is packed.
// Loaded with keep_packed, a packed weight stays packed (quant::PackedLinear), and so do
// the packed factors of "cur" and "svd" slots (quant::PackedFactors).
model::SlotFields describe_dense(const model::LinearSlot& slot) {
  if (const auto* packed = dynamic_cast<const quant::PackedLinear*>(&slot)) {
    return {{"bias", bool_field(packed->bias().defined())}};
  }
  const auto& s = dynamic_cast<const model::DenseLinear&>(slot);
  return {{"bias", bool_field(s.bias().defined())}};
}

model::LinearPtr load_dense(const model::SlotSpec& spec, const model::SlotTensors& t) {
  const std::vector<int64_t> shape{spec.out_features, spec.in_features};
  auto bias = spec.boolean("bias") ? read_factor(spec, t, "bias", {spec.out_features}) : at::Tensor();
  return kept_factor(spec, t, "weight", shape, bias);
}

// ---------------------------------------------------------------------------------------------
// "cur": C [out, k] (or C·U when folded), U [k, k], R [k, in], bias, row/column indices.
model::SlotFields describe_cur(const model::LinearSlot& slot) {
  if (const auto* kept = dynamic_cast<const quant::PackedFactors*>(&slot)) return kept->fields();
  const auto& s = dynamic_cast<const CURLinear&>(slot);
  return {{"rank", int_field(s.rank())},
          {"folded", bool_field(s.folded())},
          {"bias", bool_field(s.bias().defined())},
          {"indices", bool_field(s.row_indices().defined() && s.col_indices().defined())}};
}

model::LinearPtr load_cur(const model::SlotSpec& spec, const model::SlotTensors& t) {
  const int64_t k = spec.integer("rank");
  const int64_t out = spec.out_features, in = spec.in_features;
  if (k < 1 || k > std::min(out, in)) {
    throw std::runtime_error(fmt::format("{}: layer \"{}\": rank {} is not in [1, {}]", spec.source, spec.name, k,
                                         std::min(out, in)));
  }
  const bool folded = spec.boolean("folded", false);
  if (keeps_packed(spec, t, {"C", "CU", "U", "R"})) {
    auto bias = spec.boolean("bias") ? read_factor(spec, t, "bias", {out}) : at::Tensor();
    std::vector<quant::PackedFactors::Factor> factors{{"R", kept_factor(spec, t, "R", {k, in}, {})}};
    if (!folded) factors.push_back({"U", kept_factor(spec, t, "U", {k, k}, {})});
    factors.push_back({folded ? "CU" : "C", kept_factor(spec, t, folded ? "CU" : "C", {out, k}, bias)});
    std::vector<std::pair<std::string, at::Tensor>> extra;
    if (spec.boolean("indices", false)) {
      extra.emplace_back("row_indices", read_indices(t, "row_indices", k, out));
      extra.emplace_back("col_indices", read_indices(t, "col_indices", k, in));
    }
    return std::make_shared<quant::PackedFactors>("cur", spec.fields, std::move(factors), "bias", std::move(extra));
  }
  auto c = read_factor(spec, t, folded ? "CU" : "C", {out, k});
  auto u = folded ? at::Tensor() : read_factor(spec, t, "U", {k, k});
  auto r = read_factor(spec, t, "R", {k, in});
  auto bias = spec.boolean("bias") ? read_factor(spec, t, "bias", {out}) : at::Tensor();
  at::Tensor rows, cols;
  if (spec.boolean("indices", false)) {
    rows = read_indices(t, "row_indices", k, out);
    cols = read_indices(t, "col_indices", k, in);
  }
  return std::make_shared<CURLinear>(c, u, r, bias, rows, cols);
}

// ---------------------------------------------------------------------------------------------
// "svd": A [out, k] ("ALinear.weight"), B [k, in] ("BLinear.weight"), bias ("ALinear.bias").
model::SlotFields describe_svd(const model::LinearSlot& slot) {
  if (const auto* kept = dynamic_cast<const quant::PackedFactors*>(&slot)) return kept->fields();
  const auto& s = dynamic_cast<const SVDLinear&>(slot);
  return {{"rank", int_field(s.rank())}, {"bias", bool_field(s.bias().defined())}};
}

model::LinearPtr load_svd(const model::SlotSpec& spec, const model::SlotTensors& t) {
  const int64_t k = spec.integer("rank");
  if (k < 1 || k > std::min(spec.out_features, spec.in_features)) {
    throw std::runtime_error(fmt::format("{}: layer \"{}\": rank {} is not in [1, {}]", spec.source, spec.name, k,
                                         std::min(spec.out_features, spec.in_features)));
  }
  if (keeps_packed(spec, t, {"ALinear.weight", "BLinear.weight"})) {
    auto bias = spec.boolean("bias") ? read_factor(spec, t, "ALinear.bias", {spec.out_features}) : at::Tensor();
    std::vector<quant::PackedFactors::Factor> factors{
        {"BLinear.weight", kept_factor(spec, t, "BLinear.weight", {k, spec.in_features}, {})},
        {"ALinear.weight", kept_factor(spec, t, "ALinear.weight", {spec.out_features, k}, bias)}};
    return std::make_shared<quant::PackedFactors>("svd", spec.fields, std::move(factors), "ALinear.bias");
  }
  auto a = read_factor(spec, t, "ALinear.weight", {spec.out_features, k});
  auto b = read_factor(spec, t, "BLinear.weight", {k, spec.in_features});
  auto bias = spec.boolean("bias") ? read_factor(spec, t, "ALinear.bias", {spec.out_features}) : at::Tensor();
  return std::make_shared<SVDLinear>(a, b, bias);
}

// ---------------------------------------------------------------------------------------------
// "skeleton_row": W_I [k, in], X_rest [out - k, k], row_index (int64 [out], kept rows first), bias.
// "skeleton_col": W_J [out, k], Z_rest [k, in - k], col_index (int64 [in], kept columns first), bias.
model::SlotFields describe_skeleton(const model::LinearSlot& slot) {
  const auto& s = dynamic_cast<const SkeletonLinear&>(slot);
  return {{"rank", int_field(s.rank())}, {"bias", bool_field(s.bias().defined())}};
}

model::LinearPtr load_skeleton(const model::SlotSpec& spec, const model::SlotTensors& t) {
  const bool row = spec.kind == "skeleton_row";
  const int64_t k = spec.integer("rank");
  const int64_t out = spec.out_features, in = spec.in_features;
  const int64_t full = row ? out : in;  // the length of the permutation
  if (k < 1 || k > std::min(out, in)) {
    throw std::runtime_error(fmt::format("{}: layer \"{}\": rank {} is not in [1, {}]", spec.source, spec.name, k,
                                         std::min(out, in)));
  }
  auto kept = row ? read_factor(spec, t, "W_I", {k, in}) : read_factor(spec, t, "W_J", {out, k});
  auto predictor = row ? read_factor(spec, t, "X_rest", {out - k, k}) : read_factor(spec, t, "Z_rest", {k, in - k});
  const std::string index_name = row ? "row_index" : "col_index";
  auto index = read_indices(t, index_name, full, full);
  auto bias = spec.boolean("bias") ? read_factor(spec, t, "bias", {out}) : at::Tensor();
  try {
    return std::make_shared<SkeletonLinear>(row ? SkeletonSide::Row : SkeletonSide::Column, kept, predictor, index,
                                            bias);
  } catch (const std::invalid_argument& e) {  // e.g. an index that is no permutation
    throw std::runtime_error(fmt::format("{}: {}", t.describe(index_name), e.what()));
  }
}

const model::SlotKindRegistrar dense_kind({"dense", describe_dense, load_dense});
const model::SlotKindRegistrar cur_kind({"cur", describe_cur, load_cur});
const model::SlotKindRegistrar svd_kind({"svd", describe_svd, load_svd});
const model::SlotKindRegistrar skeleton_row_kind({"skeleton_row", describe_skeleton, load_skeleton});
const model::SlotKindRegistrar skeleton_col_kind({"skeleton_col", describe_skeleton, load_skeleton});

}  // namespace
}  // namespace cur4llm::compress
