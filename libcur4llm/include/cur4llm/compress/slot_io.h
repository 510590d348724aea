#pragma once
/// Reading the tensors of a stored slot for the slot kinds' loaders
/// (model/slot_registry.h): floating factors stored plainly or packed
/// (compress/packed_quant.h), index vectors. This library registers the kinds
/// "dense" (a quantized dense layer), "cur" and "svd"; a new kind registers
/// itself in its own source file with model::SlotKindRegistrar and reads its
/// tensors with these helpers:
///
///   LinearPtr load_my_kind(const model::SlotSpec& spec, const model::SlotTensors& t) {
///     const int64_t k = spec.integer("rank");
///     auto a = compress::read_factor(spec, t, "A", {spec.out_features, k});
///     ...
///   }

#include <cur4llm/model/slot_registry.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace cur4llm::compress {

/// The floating tensor `name` of shape `shape`, in the model's dtype and on its
/// device: stored as it is, or packed as name.qweight / .scales / .zeros when
/// spec.packed lists it (dequantized in spec.quant_format). std::runtime_error
/// naming the file and tensor if it is missing, misshaped or not floating.
at::Tensor read_factor(const model::SlotSpec& spec, const model::SlotTensors& tensors, const std::string& name,
                       const std::vector<int64_t>& shape);

/// An int64 index vector [count] on the CPU with every value in [0, bound);
/// std::runtime_error naming the tensor otherwise.
at::Tensor read_indices(const model::SlotTensors& tensors, const std::string& name, int64_t count, int64_t bound);

/// `value` as the JSON text SlotFields hold.
std::string int_field(int64_t value);
std::string bool_field(bool value);

}  // namespace cur4llm::compress
