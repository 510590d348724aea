#pragma once
/// Module methods: compressions that act on a pair of Linears meeting in a
/// hidden dimension and leave smaller dense layers (docs/methods.md), with the
/// allocation of the reduced widths across layers for a whole-model target
/// (uniform: one nominal ratio width / base width for every module; lagrangian:
/// a per-module calibration-ppl table at candidate ratios and the Lagrangian
/// search of search/lagrangian.h over modules, with exact stored counts).
///
///   modules::ModuleOptions o;
///   o.allocation = "lagrangian";
///   auto r = modules::compress_modules(*lm, stats, samples, 0.8, o);  // stats with Gram matrices
///   std::cout << r.plan.table();
///
/// Module names: "<layer prefix>.mlp" (MlpModule::name) and "<layer prefix>.self_attn.vo" (VoModule::name).

#include <cur4llm/modules/mlp_nystrom.h>
#include <cur4llm/search/compression_plan.h>
#include <cur4llm/search/sensitivity_table.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::calib {
class ActivationStatistics;
}

namespace cur4llm::modules {

/// The module method names: "mlp_nystrom" (MLPs), "vo_svd" (attention values
/// and outputs), "qk_cr" (queries and keys), "modular" (all three, allocated together),
/// "mixed" (all three, each either narrowed or its Linears factorized by the Gram compressor
/// that must follow it, "mixed+svd_whiten"; lagrangian allocation only).
const std::vector<std::string>& module_method_names();
/// True for a name of module_method_names(), alone or as "<module method>+<Gram compressor>"
/// (e.g. "mlp_nystrom+svd_whiten"): the decoder Linears outside the modules are then compressed
/// per layer by that compressor, in the same allocation (lagrangian: their ratios on the
/// candidate grid; uniform: the modules' nominal ratio).
bool is_module_method(const std::string& method);
/// "mlp_nystrom+svd_whiten" -> {"mlp_nystrom", "svd_whiten"}; no "+": {method, ""}.
std::pair<std::string, std::string> split_module_method(const std::string& method);

/// How compress_modules works.
struct ModuleOptions {
  std::string method = "mlp_nystrom";  ///< a module method name (module_method_names())
  NystromOptions nystrom;              ///< MLP Nyström settings
  int64_t head_align = 1;              ///< kept query/key and value head widths are multiples of this (and of a rotary pair; up to the head dim)
  std::string allocation = "uniform";  ///< "uniform": one nominal ratio for every module; "lagrangian": per module
  std::vector<double> candidates;      ///< lagrangian: module ratios tried; empty: 0.1, 0.2, ..., 0.9
  int64_t batch_size = 1;              ///< samples per forward pass of the calibration perplexity
  bool show_progress = false;          ///< a line per sensitivity point on stderr
  const search::SensitivityTable* sensitivity = nullptr;  ///< lagrangian: a table made before (same model and options); null: measure
  bool compress_lm_head = false;  ///< a tied lm_head counts in full and is a hybrid's candidate (else left out)
};

/// "uniform" | "lagrangian"; std::invalid_argument naming the valid values otherwise.
void check_allocation(const std::string& allocation);

/// What compress_modules did.
struct ModuleResult {
  search::CompressionPlan plan;            ///< every Linear but a tied lm_head: module layers "mlp_nystrom", the rest "dense"
  std::map<std::string, int64_t> widths;   ///< module name -> width kept (MLP channels, value head width)
  search::SensitivityTable sensitivity;    ///< lagrangian: (module, ratio) -> calibration ppl
  double dense_calibration_ppl = -1;       ///< lagrangian: the dense model's calibration ppl
};

/// Compresses the modules of `lm` (dense Linears) so that the Linear weights
/// of the whole model are at most `param_ratio_target` of the dense model's
/// (a tied lm_head, which stores nothing of its own, is not counted unless
/// options.compress_lm_head; the rest
/// of the model stays dense; if even the narrowest modules do not
/// reach the target, every module takes its narrowest width). `stats` must
/// hold the Gram matrices of the inputs of down_proj / fc2 and v_proj (CollectOptions::gram).
/// std::invalid_argument for an unknown method or allocation, a target outside (0, 1].
ModuleResult compress_modules(model::CausalLM& lm, const calib::ActivationStatistics& stats,
                              const std::vector<std::vector<int64_t>>& samples, double param_ratio_target,
                              const ModuleOptions& options = {});

}  // namespace cur4llm::modules
