#pragma once
/// @file
/// The umbrella header of cur4llm's public API: includes every header a
/// downstream project may use, area by area in the order data flows.
///
/// @code
/// #include <cur4llm/cur4llm.h>
/// auto lm = cur4llm::model::CausalLM::load("path/to/model", {});
/// @endcode
///
/// Internal headers (util/host_memory.h, util/fused_kernels.h,
/// io/atomic_folder.h) are left out: the library and its apps use them, and
/// they may change without notice.

#include <cur4llm/version.h>
#include <cur4llm/io/cache.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/hub.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/config.h>
#include <cur4llm/model/kv_cache.h>
#include <cur4llm/model/linear.h>
#include <cur4llm/model/slot_registry.h>
#include <cur4llm/data/selfgen.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/data_cur.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/grad_cur_linear.h>
#include <cur4llm/compress/gram.h>
#include <cur4llm/compress/optimize_scale.h>
#include <cur4llm/compress/randomized_svd.h>
#include <cur4llm/compress/sequential.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/slot_io.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/compress/whiten_svd.h>
#include <cur4llm/quant/awq.h>
#include <cur4llm/quant/packed_model.h>
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/sensitivity/sensitivity.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/compression_plan.h>
#include <cur4llm/search/lagrangian.h>
#include <cur4llm/search/sensitivity_table.h>
#include <cur4llm/search/stable_rank.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/generate/generate.h>
#include <cur4llm/pipeline/pipeline.h>
#include <cur4llm/repo/acur_repo.h>
#include <cur4llm/report/plots.h>
#include <cur4llm/report/report.h>
#include <cur4llm/report/results.h>
#include <cur4llm/report/svg.h>
#include <cur4llm/util/device.h>
#include <cur4llm/util/progress.h>
