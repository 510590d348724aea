#pragma once
/// How each kind of Linear slot is written to, and rebuilt from, an acur
/// repository (docs/export.md): config.json's "acur" section describes every
/// non-dense slot, and the safetensors hold its tensors under
/// "<module name>.<tensor name of LinearSlot::state()>".
///
/// A slot kind registers once, in its own source file:
///
///   const model::SlotKindRegistrar my_kind({"my_kind", describe_my_kind, load_my_kind});
///
/// `describe` gives the config.json fields of a slot (besides kind,
/// in_features and out_features) and `load` rebuilds the slot from those
/// fields and the stored tensors.

#include <cur4llm/model/linear.h>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace cur4llm::model {

/// The newest acur repository format this build writes and reads. A
/// repository of a newer format is refused at load, naming both versions.
constexpr int kAcurFormatVersion = 1;

/// Extra config.json fields of one slot: key -> the value as JSON text
/// ("12", "true", "\"row\""); see SlotSpec for reading them back.
using SlotFields = std::map<std::string, std::string>;

/// One slot as config.json's "acur" section describes it.
struct SlotSpec {
  std::string name;                ///< module name, e.g. "model.layers.0.mlp.up_proj"
  std::string kind;                ///< "cur", "svd", "dense", ...
  int64_t in_features = 0;
  int64_t out_features = 0;
  SlotFields fields;               ///< every other key of the layer's entry, as JSON text
  std::set<std::string> packed;    ///< tensors stored packed ("C", "weight", ...), see compress/packed_quant.h
  std::string quant_format;        ///< the repository's quantization format ("rtn_int4"), empty if none
  std::string source;              ///< config.json's path, for error messages

  bool has(const std::string& key) const { return fields.count(key) > 0; }
  /// The field `key` as an integer / bool / string; std::runtime_error naming
  /// the file, the layer and the key if it is missing or of another type.
  int64_t integer(const std::string& key) const;
  bool boolean(const std::string& key) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key) const;
};

/// The stored tensors of one slot, by name relative to the slot ("C", "ALinear.weight", "C.qweight").
class SlotTensors {
 public:
  virtual ~SlotTensors() = default;
  virtual bool contains(const std::string& name) const = 0;
  /// The stored tensor on the CPU in its stored dtype, its shape checked
  /// against `shape`; std::runtime_error naming the file and the full tensor
  /// name if it is missing or shaped otherwise.
  virtual at::Tensor stored(const std::string& name, const std::vector<int64_t>& shape) const = 0;
  /// "<file>: tensor \"<full name>\"", for error messages.
  virtual std::string describe(const std::string& name) const = 0;
  /// Where and in which dtype the model runs: floating factors go there.
  virtual c10::Device device() const = 0;
  virtual c10::ScalarType dtype() const = 0;
  /// Whether a packed weight may stay packed in the rebuilt slot (LoadOptions::keep_packed).
  virtual bool keep_packed() const { return false; }
};

/// How one slot kind is described in config.json and rebuilt from it.
struct SlotKind {
  std::string kind;  ///< equals LinearSlot::kind() of the slots it handles
  /// The config.json fields of `slot` besides kind, in_features and out_features.
  std::function<SlotFields(const LinearSlot& slot)> describe;
  /// Rebuilds a slot (on tensors.device(), in tensors.dtype()) from its spec and stored tensors.
  std::function<LinearPtr(const SlotSpec& spec, const SlotTensors& tensors)> load;
};

/// Registers a kind; std::logic_error if the name is taken or a function is missing.
void register_slot_kind(SlotKind kind);
/// The kind named `kind`; std::runtime_error listing the registered kinds otherwise.
const SlotKind& find_slot_kind(const std::string& kind);
/// Registered kind names, sorted.
std::vector<std::string> slot_kind_names();

/// Registers a kind when constructed: one static object per kind's source file.
struct SlotKindRegistrar {
  explicit SlotKindRegistrar(SlotKind kind) { register_slot_kind(std::move(kind)); }
};

}  // namespace cur4llm::model
