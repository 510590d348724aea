#pragma once
// The compression flags acur and build_acur_repo share: the reference
// pipeline's (asvd.py) with their names and defaults, and cur4llm's own.

#include <cur4llm/data/text_data.h>
#include <cur4llm/pipeline/pipeline.h>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <stdexcept>
#include <string>

namespace cur4llm::app {

/// Where the flags' values land; `data_dir` and `cache_dir` are read as strings.
struct PipelineFlags {
  pipeline::PipelineOptions options;
  std::string data_dir;
  std::string cache_dir = "cache";
  std::string device = "cpu";
  std::string device_map;  ///< --device_map (model/device_map.h)
  std::string max_memory;  ///< --max_memory
  int gpus_per_rank = 0;   ///< --gpus_per_rank (0: not given)
  std::string dtype;
  std::string candidates;
  std::string preset = "best";
  bool compress_lm_head = false;

  /// The options with the folders and candidates filled in (std::invalid_argument for bad candidates).
  /// The options as the run will use them: the preset's values filled in (pipeline::resolve).
  pipeline::PipelineOptions resolved() const {
    auto o = options;
    o.data_dir = data_dir;
    o.cache_dir = cache_dir;
    o.candidates = pipeline::parse_candidates(candidates);
    o.preset = pipeline::parse_preset(preset);
    if (compress_lm_head) o.lm_head = pipeline::LmHeadPolicy::kCompress;
    return pipeline::resolve(o);
  }
};

/// Adds the reference's flags to `ref` and cur4llm's to `own`.
inline void add_pipeline_flags(boost::program_options::options_description& ref,
                               boost::program_options::options_description& own, PipelineFlags& f) {
  namespace po = boost::program_options;
  auto& o = f.options;
  ref.add_options()
      ("ppl_target", po::value(&o.ppl_target)->default_value(-1), "target calibration perplexity (binary search)")
      ("param_ratio_target", po::value(&o.param_ratio_target)->default_value(-1),
       "target ratio of Linear weight parameters, in (0, 1]")
      ("act_aware", po::value<bool>()->implicit_value(true)->notifier([&o](bool v) { o.act_aware = v; }),
       "scale the weight by activation statistics, ASVD-style (default: on for the methods that read an "
       "activation scale; off with the reference preset; --act_aware=false turns it off)")
      ("alpha", po::value(&o.alpha)->default_value(0.5), "exponent of the activation scale, >= 0")
      ("n_calib_samples", po::value(&o.n_calib_samples)->default_value(32), "calibration samples")
      ("calib_dataset", po::value(&o.calib_dataset)->default_value("wikitext2"),
       "wikitext2, ptb, c4 (train split), name:split, a text file, alpaca[:FILE] (instruction records), or "
       "selfgen[:SPEC] (samples the model generates from the start of each row of wikitext2's train split or SPEC)")
      ("scaling_method", po::value(&o.scaling_method)->default_value("abs_mean"),
       "abs_mean, abs_max, fisher or fisher_abs_mean")
      ("sensitivity_metric", po::value(&o.sensitivity_metric)->default_value("ppl"), "ppl or stable_rank")
      ("use_cache", po::bool_switch(&o.use_cache), "reuse calibration samples, statistics and sensitivity from --cache_dir")
      ("sigma_fuse", po::value(&o.sigma_fuse)->default_value("UV"), "SVD: which factor takes the singular values (U, V, UV)")
      ("seed", po::value(&o.seed)->default_value(233), "seed of calibration sampling")
      ("compress_kv_cache", po::bool_switch(&o.compress_kv_cache), "compress k_proj/v_proj only, for the KV cache")
      ("kv_cache_ratio_target", po::value(&o.kv_cache_ratio_target)->default_value(-1), "target KV-cache ratio")
      ("rank_align", po::value(&o.rank_align)->default_value(1), "ranks are multiples of this")
      ("use_bos", po::bool_switch(&o.use_bos), "put BOS before each calibration sample if the tokenizer does not");
  own.add_options()
      ("preset", po::value(&f.preset)->default_value("best"),
       "where the defaults come from: best (the best measured configuration: skeleton_swap, sequential, "
       "Lagrangian search, candidates 0.4..0.95) or reference (the reference pipeline exactly: cur, its binary "
       "search and candidates, lm_head counted like any Linear); flags given explicitly win")
      ("method", po::value(&o.method),
       "decomposition (default: skeleton_swap; cur with --preset reference): cur, svd, grad_cur (CUR with "
       "trainable scales); on the input Gram matrix: svd_whiten, "
       "skeleton (row or column side per layer), skeleton_row, skeleton_col, cur_whiten, cur_deim, cur_qr; "
       "skeleton_diag (on the scale); module methods (smaller dense layers): mlp_nystrom, vo_svd, qk_cr, modular, or one of them + a Gram method for the other Linears (mlp_nystrom+svd_whiten); mixed+<Gram method>: per module, narrowed or its Linears factorized, as the search finds cheaper; see docs/methods.md")
      ("channel_selection", po::value(&o.channel_selection)->default_value("greedy"),
       "mlp_nystrom / modular: kept channels by greedy (output-weighted pivoted Cholesky) or ridge_leverage")
      ("ridge", po::value(&o.ridge)->default_value(1e-4), "mlp_nystrom: ridge of the refit, relative to the mean activation power")
      ("head_align", po::value(&o.head_align)->default_value(1),
       "qk_cr / vo_svd / modular: kept query/key and value head widths are multiples of this (e.g. 32 for the "
       "GPU attention kernels' head sizes)")
      ("cur_selection", po::value(&o.cur_selection)->default_value("topk"), "CUR rows/columns: topk or sampled leverage")
      ("cur_fold_u", po::bool_switch(&o.cur_fold_u),
       "CUR: store C*U instead of C and U (out*k + k*in weights instead of + k*k: a higher rank at the same ratio "
       "and one product less per forward; C is then no longer columns of W)")
      ("search", po::value(&o.search),
       "param-ratio search on the ppl table: reference (binary search of the reference) or lagrangian "
       "(log-ppl increase against parameters saved; docs/search.md). Default: lagrangian for a param-ratio "
       "target, reference otherwise and with --preset reference")
      ("candidates", po::value(&f.candidates)->default_value(""),
       "ppl sensitivity: comma-separated candidate ratios in (0, 1) (default: 0.4,0.45,...,0.95; the "
       "reference's 0.4,0.5,...,0.9 in the KV-cache mode and with --preset reference)")
      ("sequential", po::value<bool>()->implicit_value(true)->notifier([&o](bool v) { o.sequential = v; }),
       "data-aware methods: decompose layer by layer on the inputs of the model compressed so far, fitted to the "
       "dense outputs (docs/methods.md). Default: on for data-aware methods; --sequential=false turns it off")
      ("compress_lm_head", po::bool_switch(&f.compress_lm_head),
       "let the search compress a tied lm_head too (it then unties from the embedding and its factors count in "
       "full); by default a tied lm_head stays dense and tied, since it stores nothing of its own")
      ("device", po::value(&f.device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("device_map", po::value(&f.device_map), "decoder layers over several devices: auto, cuda:0=0-39,cuda:1=40-79, "
       "or a .json file (docs/distributed.md)")
      ("max_memory", po::value(&f.max_memory), "with --device_map: what each device may hold, e.g. cuda:0=20GiB,cuda:1=20GiB; "
       "layers beyond stay in host memory and are copied in to run")
      ("gpus_per_rank", po::value<int>()->notifier([&f](int k) {
         if (k < 1) throw std::invalid_argument(fmt::format("--gpus_per_rank must be 1 or more, not {}", k));
         f.gpus_per_rank = k;
       }), "CUDA devices of each rank when several run on a host (default 1): "
       "local rank l uses devices l*K .. l*K+K-1, seen as cuda:0 .. cuda:K-1 (docs/distributed.md)")
      ("dtype", po::value(&f.dtype)->default_value(""), "fp32, fp16 or bf16 (default: fp32 on CPU, checkpoint's on CUDA)")
      ("seqlen", po::value(&o.seqlen)->default_value(2048), "tokens per sample and per evaluation window")
      ("data_dir", po::value(&f.data_dir)->default_value(""), "datasets folder (default $CUR4LLM_DATA_DIR, else ./data)")
      ("cache_dir", po::value(&f.cache_dir)->default_value("cache"), "where --use_cache keeps its files")
      ("batch_size", po::value(&o.batch_size)->default_value(1), "samples or windows per forward pass")
      ("sweep_batch_size", po::value(&o.sweep_batch_size)->default_value(0),
       "calibration samples per forward pass of the sensitivity sweep (0: as many as fit in 65536 tokens)");
}

/// Refuses an activation-aware --weight_quant / --format (`format`) whose
/// calibration data `calib_dataset` is not given or cannot be found, before any work.
inline void require_calibration_data(const std::string& format, const std::string& calib_dataset,
                                     const std::filesystem::path& data_dir) {
  if (calib_dataset.empty()) {
    throw std::invalid_argument(format + " searches its scales on calibration data: give --calib_dataset");
  }
  try {
    data::resolve_dataset(calib_dataset, data::Purpose::Calibration, data_dir);
  } catch (const std::exception& e) {
    throw std::invalid_argument(format + " searches its scales on calibration data, and --calib_dataset " +
                                calib_dataset + " has none: " + e.what());
  }
}

}  // namespace cur4llm::app
