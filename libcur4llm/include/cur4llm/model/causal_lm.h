#pragma once
/// A decoder-only causal language model loaded from a Hugging Face folder.
///
///   auto lm = cur4llm::model::CausalLM::load("path/to/model", {});
///   at::Tensor logits = lm->forward(input_ids);   // [B, T] -> [B, T, vocab]
///
/// The model also runs one decoder layer at a time, so that callers can cache
/// the hidden states entering a layer:
///   h = lm->embed(ids); for (i...) h = lm->layer(i, h); logits = lm->head(h);
/// Every Linear sits in a named slot (the Hugging Face module name, e.g.
/// "model.layers.3.self_attn.q_proj" or "lm_head") that can be swapped.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cur4llm/model/config.h>
#include <cur4llm/model/device_map.h>
#include <cur4llm/model/linear.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {

/// Where and in which precision the model runs.
struct LoadOptions {
  c10::Device device = c10::Device(c10::kCPU);   ///< CPU or CUDA
  std::optional<c10::ScalarType> dtype;           ///< default: float32 on CPU, config's dtype on CUDA
  bool allow_nonfinite = false;                   ///< load weights holding NaN/inf (refused by default)
  bool keep_packed = false;                       ///< packed dense weights stay packed (quant::PackedLinear), not dequantized at load
  std::string device_map;  ///< "" (everything on `device`), "auto", "cuda:0=0-39,cuda:1=40-79" or a .json file (model/device_map.h)
  std::string max_memory;  ///< with device_map: bytes each device may hold, "cuda:0=20GiB,cpu=64GiB"; beyond: offloaded
};

/// The role a Linear plays inside a decoder layer.
enum class LinearRole { Q, K, V, O, Fc1, Fc2, Gate, Up, Down };

/// Identity of one Linear slot.
struct LinearInfo {
  std::string name;     ///< Hugging Face module name
  int64_t layer = -1;   ///< decoder layer index; -1 for lm_head / projections
  std::optional<LinearRole> role;
  int64_t in_features = 0;
  int64_t out_features = 0;
};

/// Decoder layer `layer` run on some hidden states as far as its Linear slot
/// `role` allows: the values the rest of the layer needs that do not depend on
/// that slot's output (e.g. for fc2: the residual stream and fc1's activation).
/// CausalLM::layer_resume() finishes the layer with the slots as they are then.
/// @internal
/// Internal: the sensitivity sweep's interface to the families' forward passes;
/// not part of the public API (left out of the API reference) and may change.
struct LayerPrefix {
  int64_t layer = -1;
  LinearRole role = LinearRole::Q;
  std::vector<at::Tensor> values;  ///< the family's intermediate values (internal layout)
};

class Architecture;  // internal: one per family
class KVCache;       // model/kv_cache.h

/// What a model folder's config.json says about how it is stored: an ordinary
/// Hugging Face folder, or an acur repository (docs/export.md).
struct StoredForm {
  int acur_format_version = 0;  ///< 0: an ordinary folder; else the "acur" section's format_version
  std::string method;           ///< the repository's decomposition ("cur", "svd"; empty if none)
  std::string quantization;     ///< packed weight format ("rtn_int8", ...); empty if none
  bool base_tie_word_embeddings = false;  ///< the source model tied lm_head to the embedding (acur.base)
};

/// A loaded causal LM. Not copyable; share it through the unique_ptr.
class CausalLM {
 public:
  /// Loads config.json and the safetensors weights of `folder`, checking every
  /// tensor's presence and shape (errors name the tensor and the file). An
  /// acur repository (config.json with an "acur" section) gets its slots from
  /// the slot-kind registry (model/slot_registry.h), packed weights
  /// dequantized; one of a newer format version is refused.
  static std::unique_ptr<CausalLM> load(const std::filesystem::path& folder, const LoadOptions& options = {});
  /// A model of `config`'s shape with random weights (normal, std 1/sqrt(fan_in);
  /// norms 1): for throughput benchmarks, where values do not matter. `seed` fixes
  /// the weights made on the CPU; weights made on a GPU come from that device's
  /// default generator, so two models of one seed differ there.
  static std::unique_ptr<CausalLM> random(const ModelConfig& config, const LoadOptions& options = {},
                                          uint64_t seed = 0);
  ~CausalLM();

  const ModelConfig& config() const { return config_; }
  const std::filesystem::path& folder() const { return folder_; }
  /// How the loaded folder was stored.
  const StoredForm& stored_form() const { return stored_form_; }
  /// Where the embedding runs (with a device map: the first device); token ids go there.
  c10::Device device() const { return options_.device; }
  /// The placement of a model loaded with LoadOptions::device_map, or null.
  const Placement* placement() const { return placement_ ? &*placement_ : nullptr; }
  /// The device decoder layer `index` runs on.
  c10::Device layer_device(int64_t index) const;
  /// The device of the final norm and lm_head.
  c10::Device head_device() const;
  /// Whether decoder layer `index` is kept in host memory and copied to its device to run.
  bool layer_offloaded(int64_t index) const;
  /// Whether any decoder layer from `first` on is offloaded (layer_offloaded).
  bool offloads_layers(int64_t first = 0) const;
  c10::ScalarType dtype() const { return dtype_; }

  /// Token ids [B, T] (int64, any device) to the hidden states entering layer 0.
  at::Tensor embed(const at::Tensor& input_ids) const;
  /// Decoder layer `index` applied to hidden states [B, T, hidden].
  at::Tensor layer(int64_t index, const at::Tensor& hidden) const;
  /// Decoder layers [first, end) applied to each batch of `hidden` (states entering layer
  /// `first`): every batch passes an offloaded layer before the next layer runs, so that the
  /// layer is copied to its device once for all of them; a run of resident layers takes the
  /// batches one at a time. With `park_on_host` the states wait in host memory after each
  /// offloaded layer and each run of resident ones (many batches on a device that has room
  /// for few). Each batch is computed as it is alone. While an offloaded layer runs, the next
  /// offloaded one on the same device is copied in on a side stream (host copies pinned on
  /// first use), so a device holds up to two offloaded layers beside its resident ones.
  void layers(int64_t first, int64_t end, std::vector<at::Tensor>& hidden, bool park_on_host = false) const;
  /// Layer `index` on `hidden` up to its slot `role` (see LayerPrefix). Then
  /// layer_resume(prefix) == layer(index, hidden) with the slots as they are at
  /// resume time: a sweep that tries several candidates for one slot computes
  /// the part of the layer before it once.
  /// @internal Internal (see LayerPrefix); may change.
  LayerPrefix layer_prefix(int64_t index, const at::Tensor& hidden, LinearRole role) const;
  /// The rest of the layer of `prefix`: the layer's output.
  /// @internal Internal (see LayerPrefix); may change.
  at::Tensor layer_resume(const LayerPrefix& prefix) const;
  /// Final norm (and OPT's project_out): hidden states in front of lm_head.
  at::Tensor final_hidden(const at::Tensor& hidden) const;
  /// The slot that turns final_hidden() states into logits: lm_head, wrapped in
  /// the family's final soft-capping where it has one (Gemma-2). Evaluation
  /// calls it in place of linear("lm_head").
  LinearPtr logits_slot() const;
  /// Final norm and lm_head: logits [B, T, vocab] in the model dtype.
  at::Tensor head(const at::Tensor& hidden) const;
  /// embed, every layer, head.
  at::Tensor forward(const at::Tensor& input_ids) const;
  /// The new tokens `input_ids` [B, T] of each row, after the tokens `cache`
  /// holds (model/kv_cache.h), whose keys and values are stored in it: a
  /// prefill (T prompt tokens) or a decoding step (T = 1). `mask` [B, T]
  /// (optional; nonzero: a token, 0: padding) marks padding, e.g. the left
  /// padding of prompts of different lengths; positions count tokens only.
  /// Returns logits [B, 1, vocab] of the last new token of each row, or
  /// [B, T, vocab] with `all_positions`. std::invalid_argument if the tokens do
  /// not fit in the cache or the family does not support generation.
  at::Tensor forward_cached(const at::Tensor& input_ids, KVCache& cache, const at::Tensor& mask = {},
                            bool all_positions = false) const;
  /// forward_cached() without the head: the last decoder layer's hidden states
  /// [B, T, hidden] of the new tokens (final_hidden() not applied yet).
  at::Tensor forward_cached_hidden(const at::Tensor& input_ids, KVCache& cache, const at::Tensor& mask = {}) const;
  /// The last decoder layer's hidden states [B, T, hidden] (final_hidden() not
  /// applied) of rows that each hold a tree of tokens, in one pass (as
  /// forward_cached_hidden through an empty cache of T slots): sequences that
  /// begin alike, their common beginning once, e.g. a context followed by its
  /// candidate continuations, each scored as if it followed the context alone.
  /// The tree is laid out depth first: a token is followed by its subtree, the
  /// tokens that continue it. `ends` [B, T] int64: the slot after the last of
  /// each token's subtree (in (slot, T]; -1 for padding); a token sees itself
  /// and the earlier tokens whose subtree holds it, never a sibling's.
  /// `positions` [B, T] int64 in [0, T): each token's depth in its tree.
  at::Tensor forward_tree_hidden(const at::Tensor& input_ids, const at::Tensor& positions,
                                 const at::Tensor& ends) const;
  /// Whether every layer and the head run on device() with nothing offloaded,
  /// as forward_cached() needs (a KV cache lives on one device).
  bool on_one_device() const;
  int64_t num_layers() const { return config_.num_layers; }

  /// Every Linear slot, in model order (layers, then lm_head), with the shapes
  /// of the base model (a layer narrowed by reshape_layer keeps its base shape here).
  const std::vector<LinearInfo>& linears() const { return linear_infos_; }
  bool has_linear(const std::string& name) const;
  /// The slot `name`; throws std::invalid_argument naming it if absent.
  const LinearSlot& linear(const std::string& name) const;
  LinearPtr linear_ptr(const std::string& name) const;
  /// The slot `name` as a dense layer; std::invalid_argument naming it if absent
  /// or already compressed ("layer \"X\" is already cur, not dense").
  const DenseLinear& dense_linear(const std::string& name) const;
  /// Puts `slot` in place of `name` and returns the previous one. The new slot
  /// must have the same in/out features as the slot it replaces.
  LinearPtr replace_linear(const std::string& name, LinearPtr slot);
  /// Gives decoder layer `layer` the widths `shapes` (0 fields: the model-wide
  /// value) and installs `slots` (module name -> slot) at once: every slot of
  /// that layer whose shape the new widths change must be given, and every
  /// given slot must belong to the layer and have the shape the new widths
  /// imply (std::invalid_argument naming the slot otherwise; nothing changes
  /// then). Returns the slots it displaced. linears() keeps the base model's
  /// shapes, so count_params() still counts against the dense model. Do not
  /// hold a ScopedSlots guard across a call: it would restore old shapes.
  std::map<std::string, LinearPtr> reshape_layer(int64_t layer, const LayerShapes& shapes,
                                                 const std::map<std::string, LinearPtr>& slots);

  /// Stacks each decoder layer's projections that read the same input, query,
  /// key and value, and gate and up, into one slot per group
  /// (LinearSlot::stacked_with: dense weights, or packed ones of one format),
  /// and gives each projection's slot a view of that one's storage
  /// (LinearSlot::rows): the forward then computes a group as one product
  /// (fewer, larger products; decoding gains most). The values do not change.
  /// A group whose slots cannot stack (factorized, different dtypes, devices,
  /// formats, or biases on some), or of a layer offloaded to host memory, is
  /// left as it is. Replacing one slot of a
  /// group later ends its single product; the group's other slots then still
  /// hold the shared storage, the replaced slot's part included, so call this
  /// once the model's slots are final (before generating or evaluating, not
  /// before compressing). Returns how many groups are stacked now.
  int64_t group_projections();

  /// Parameters that are not in Linear slots (embeddings, norms, positions).
  const std::map<std::string, at::Tensor>& other_tensors() const { return others_; }
  /// Weight parameters of all Linear slots, and of the dense model they came from.
  int64_t linear_weight_params() const;

 private:
  CausalLM() = default;
  friend class Architecture;
  friend class ScopedSlots;
  // Fills every expected tensor from `fetch` (name, expected shape) -> tensor,
  // except the Linear modules in `provided`, whose slots the caller sets.
  template <typename Fetch>
  void populate(Fetch&& fetch, const std::set<std::string>& provided = {});
  // Resolves options_.device_map for this model (after arch_ and dtype_ are set).
  void place();
  // Where the tensor `name` lives: its layer's device, host memory for an
  // offloaded layer, else the embedding's or the head's device.
  c10::Device home_of(const std::string& name) const;
  // Decoder layer `index` on its device (hidden states moved there; an offloaded layer copied in
  // for the call): layers() for one batch.
  at::Tensor run_layer(int64_t index, const at::Tensor& hidden) const;
  // The layers over a step of `cache` whose tokens have `positions`, `tokens` (false: padding)
  // and `ends` (KVCache::ends; undefined: none), all [B, T] on device(): forward_cached_hidden's work.
  // `whole_rows`: the caller knows there is no padding and no tree; `keep_keys` false: nothing reads
  // the cache afterwards (detail::Step).
  at::Tensor run_step(const at::Tensor& input_ids, KVCache& cache, const at::Tensor& positions,
                      const at::Tensor& tokens, const at::Tensor& ends, bool whole_rows,
                      bool keep_keys = true) const;
  // Every slot tensor (LinearSlot::state()) and norm of decoder layer `index`.
  std::vector<at::Tensor> layer_tensors(int64_t index) const;

  ModelConfig config_;
  std::filesystem::path folder_;
  StoredForm stored_form_;
  LoadOptions options_;
  c10::ScalarType dtype_ = c10::kFloat;
  std::unique_ptr<Architecture> arch_;
  std::map<std::string, at::Tensor> others_;
  std::map<std::string, LinearPtr> slots_;
  // group_projections' groups, by their first slot's name: the slots' names and the one slot
  // computing them together. A group lives while its slots do: set_slot forgets it.
  struct ProjectionGroup {
    std::vector<std::string> names;
    LinearPtr joint;
  };
  std::map<std::string, ProjectionGroup> groups_;
  // The joint slot of the group whose first slot is `first`, or null.
  const LinearSlot* joint_slot(const std::string& first) const;
  // Installs `slot` as `name` (every change of a slot after loading goes through here), forgetting
  // the group it belonged to: the joint's storage is freed once no member holds a view of it.
  void set_slot(const std::string& name, LinearPtr slot);
  std::vector<LinearInfo> linear_infos_;
  std::optional<Placement> placement_;
};

/// Parameter counts of a model as it is now and of the dense model it stands for.
struct ParamCounts {
  int64_t linear_stored = 0;  ///< weights the Linear slots store now (biases excluded)
  int64_t linear_dense = 0;   ///< out * in over every Linear slot
  int64_t total_stored = 0;   ///< other tensors + linear_stored (a dense tied lm_head counted once)
  int64_t total_dense = 0;    ///< other tensors + linear_dense (a tied lm_head counted once)
};
ParamCounts count_params(const CausalLM& lm);

/// Swaps Linear slots for the lifetime of the guard: every slot replaced
/// through it is put back, in reverse order, when the guard is destroyed (also
/// during stack unwinding). For sweeps and probes that try a layer and undo it.
///
///   model::ScopedSlots trial(*lm);
///   trial.replace("model.layers.0.mlp.up_proj", candidate);
///   ... measure ...
///   // restored here
class ScopedSlots {
 public:
  explicit ScopedSlots(CausalLM& lm) : lm_(lm) {}
  ~ScopedSlots() { restore(); }
  ScopedSlots(const ScopedSlots&) = delete;
  ScopedSlots& operator=(const ScopedSlots&) = delete;

  /// lm.replace_linear(name, slot), remembering the slot it displaced.
  void replace(const std::string& name, LinearPtr slot);
  /// Puts every displaced slot back now.
  void restore() noexcept;
  /// The slot `name` held before the guard first replaced it (the current one if never replaced).
  LinearPtr original(const std::string& name) const;

 private:
  CausalLM& lm_;
  std::vector<std::pair<std::string, LinearPtr>> displaced_;
};

/// Parses "fp32" / "float32", "fp16" / "float16", "bf16" / "bfloat16".
c10::ScalarType parse_dtype(const std::string& name);
/// Parses "cpu", "cuda", "cuda:N"; throws std::invalid_argument if CUDA is asked for and absent.
c10::Device parse_device(const std::string& name);

}  // namespace cur4llm::model
