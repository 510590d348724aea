#pragma once
/// Where a model's parts run when it is larger than one device
/// (docs/distributed.md, "Placement"):
///
///   auto                        decoder layers spread over the visible devices in
///                               order, each filled up to its budget (free memory,
///                               capped by max_memory); the embedding on the first
///                               device, the final norm and lm_head on the last
///   cuda:0=0-39,cuda:1=40-79    decoder layers by index ranges (every layer once)
///   FILE.json                   the same as a JSON object {"cuda:0": "0-39", ...}
///                               or a list [{"device": "cuda:0", "layers": "0-39"}, ...]
///
/// Layers beyond every budget are offloaded: their weights stay in host memory
/// and are copied to their device just before they run.

#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace cur4llm::model {

/// "20GiB", "1.5GB", "512MiB", "64KB", "1000" (bytes) -> bytes;
/// std::invalid_argument naming `flag` for anything else.
int64_t parse_memory_size(const std::string& text, const std::string& flag = "--max_memory");

/// "cuda:0=20GiB,cuda:1=40GiB,cpu=64GiB" -> device name -> bytes; std::invalid_argument naming --max_memory.
std::map<std::string, int64_t> parse_max_memory(const std::string& text);

/// One entry of an explicit map: decoder layers [first, last] on `device`.
struct DeviceRange {
  c10::Device device = c10::Device(c10::kCPU);  ///< where the layers run
  int64_t first = 0;                            ///< first layer (inclusive)
  int64_t last = 0;                             ///< last layer (inclusive)
};

/// A parsed device map.
struct DeviceMap {
  bool automatic = false;            ///< "auto"
  std::vector<DeviceRange> ranges;   ///< the explicit entries, in the order given (several may name one device)
  /// Parses "auto", "DEV=A-B,DEV=C-D" or the path of a JSON file (see above);
  /// std::invalid_argument naming --device_map for malformed text, std::runtime_error for an unreadable file.
  static DeviceMap parse(const std::string& spec);
};

/// A model's resolved placement.
struct Placement {
  c10::Device embed = c10::Device(c10::kCPU);  ///< embedding (and OPT's project_in)
  c10::Device head = c10::Device(c10::kCPU);   ///< final norm, lm_head (and OPT's project_out)
  std::vector<c10::Device> layers;             ///< the device each decoder layer runs on
  std::vector<int64_t> stage;                  ///< the map entry (or auto device index) each layer belongs to
  std::vector<bool> offloaded;                 ///< layer kept in host memory, copied to its device to run
  /// "embed cuda:0; layers 0-39 cuda:0, 40-79 cuda:1 (70-79 offloaded); head cuda:1".
  std::string describe() const;
  /// Decoder layers kept in host memory.
  int64_t num_offloaded() const;
};

/// What plan_placement needs to know about the model and the machine.
struct PlacementInputs {
  int64_t num_layers = 0;             ///< decoder layers
  int64_t layer_bytes = 0;            ///< bytes of one decoder layer's weights
  int64_t embed_bytes = 0;            ///< bytes on the embedding's device
  int64_t head_bytes = 0;             ///< bytes on the head's device
  std::vector<c10::Device> devices;   ///< the devices "auto" spreads over, in order
  std::map<std::string, int64_t> budget;  ///< device name -> bytes it may hold (absent: unlimited)
};

/// Resolves `map`: an explicit map must name every layer exactly once
/// (std::invalid_argument naming the layer otherwise); with a budget, the
/// layers of a device beyond it are offloaded, the last ones first.
Placement plan_placement(const DeviceMap& map, const PlacementInputs& inputs);

}  // namespace cur4llm::model
