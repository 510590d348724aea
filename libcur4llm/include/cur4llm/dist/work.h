#pragma once
/// The pipeline's stages shared over a dist::Group: each rank takes a share of
/// the work and every rank ends with the same result as one process would.
///
///   statistics   each rank runs a contiguous share of the calibration samples;
///                sums and maxima are all-reduced (float32 sums in another
///                order: equal to one process up to rounding)
///   sensitivity  each rank sweeps a cost-balanced share of the layers (a swept
///                layer costs its candidates' forward passes from its decoder
///                layer on and its decomposition: sweep_costs); the tables are
///                gathered into the one-process order, every score computed
///                exactly as one process does

#include <cur4llm/calib/statistics.h>
#include <cur4llm/sensitivity/sensitivity.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}

namespace cur4llm::dist {

class Group;

/// The rank of each item: greedy longest-first on `costs` (ties: the lower rank),
/// the same on every rank. std::invalid_argument for world_size < 1.
std::vector<int> balance(const std::vector<double>& costs, int world_size);

/// [first, end) of rank's contiguous share of n items (shares differ by at most one).
std::pair<std::size_t, std::size_t> contiguous_share(std::size_t n, int rank, int world_size);

/// What a sweep's cost depends on besides the model's shapes (sweep_costs).
struct SweepCostOptions {
  int64_t calibration_tokens = 1;  ///< tokens of all calibration samples together
  int64_t candidates = 1;          ///< candidate ratios tried per swept layer
  double prepare_cost = 40.0;      ///< a decomposition's multiply-adds per out * in * min(out, in) (compress::Compressor::prepare_cost)
};

/// The cost of sweeping each of `layers` (names of `lm`'s Linear slots), in multiply-adds:
/// for each candidate, a forward pass of the calibration tokens through the Linear weights from
/// the slot's decoder layer on (lm_head and OPT's project_out: only the vocabulary side; a slot
/// before the decoder layers, OPT's project_in: all of them), plus one decomposition of the
/// slot's out x in weight, options.prepare_cost * out * in * min(out, in).
std::vector<double> sweep_costs(const model::CausalLM& lm, const std::vector<std::string>& layers,
                                const SweepCostOptions& options = {});

/// calib::collect_statistics over the group: this rank's share of `samples`, then
/// sums and maxima over ranks. Every rank needs at least one sample
/// (std::invalid_argument otherwise).
calib::ActivationStatistics collect_statistics(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                               const calib::CollectOptions& options, Group& group);

/// sensitivity::ppl_sensitivity over the group: this rank sweeps its share of the
/// layers, and every rank returns the whole table in the one-process order.
search::SensitivityTable ppl_sensitivity(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                         const compress::Compressor& compressor, const sensitivity::ScaleFn& scale,
                                         const sensitivity::SweepOptions& options, Group& group);

/// A table as bytes that keep every score exactly (inf and NaN included), and back.
std::string table_to_bytes(const search::SensitivityTable& table);
/// Parses table_to_bytes(); std::runtime_error for malformed bytes.
search::SensitivityTable table_from_bytes(const std::string& bytes);

}  // namespace cur4llm::dist
