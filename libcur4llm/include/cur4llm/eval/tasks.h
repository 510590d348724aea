#pragma once
/// Zero-shot and few-shot tasks scored as lm-evaluation-harness (0.4.x) scores them.
///
///   auto tasks = cur4llm::eval::load_tasks({"piqa", "mmlu"}, data_dir);
///   auto results = cur4llm::eval::evaluate_tasks(*lm, *tokenizer, tasks);
///   std::cout << cur4llm::eval::format_task_table(results);
///
/// A task turns its documents into log-likelihood requests (context,
/// continuation); the model scores every request (sum of the continuation's
/// token log-probabilities, and whether greedy decoding would produce it); the
/// task turns the scores into metrics. docs/evaluation.md lists the tasks, the
/// data layout under `<data_dir>/tasks/` and where the results can differ from
/// the harness's.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace cur4llm::model {
class CausalLM;
}
namespace cur4llm::tokenize {
class Tokenizer;
}

namespace cur4llm::eval {

/// One log-likelihood request: how likely `continuation` is after `context`.
struct LoglikelihoodRequest {
  std::string context;       ///< the prompt
  std::string continuation;  ///< the text scored (with its leading delimiter)
};

/// A request in tokens, split where the harness splits it.
struct EncodedRequest {
  std::vector<int64_t> context;       ///< context ids (BOS first if the tokenizer adds one)
  std::vector<int64_t> continuation;  ///< the ids scored
};

/// What the model says about one request.
struct LoglikelihoodResult {
  double logprob = 0;      ///< sum of log p(continuation token | everything before it)
  bool is_greedy = false;  ///< every continuation token is the argmax of its position
};

/// How requests are batched.
struct ScoreOptions {
  int64_t max_batch_tokens = 0;    ///< padded tokens per forward pass (>= 1 row); 0: 1024 on CPU, 16384 on CUDA
  int64_t max_length = 0;          ///< longest input; 0: the model's max_position_embeddings (2048 if unset)
  bool show_progress = false;      ///< a progress line on stderr
  bool add_special_tokens = true;  ///< evaluate_tasks: the tokenizer's BOS (false: none, as harness < 0.4.9)
  bool share_prefixes = true;      ///< rows that begin alike run their common tokens once (models on one device)
  int64_t min_shared_prefix = 0;   ///< shortest common beginning worth sharing; 0: 16
  /// Widest packed row: rows whose prefix tree (every distinct beginning once) has no more tokens
  /// may run as one row; a group of rows that share a longer tree goes through a KV cache.
  /// 0: the model's hidden size, kept within [256, 8192]; -1: never packed.
  int64_t max_packed_tokens = 0;
};

/// What score_requests ran.
struct ScoreStats {
  int64_t rows = 0;           ///< distinct inputs
  int64_t shared_groups = 0;  ///< groups of rows whose common beginnings ran once
  int64_t packed_groups = 0;  ///< of which ran as one packed row, a prefix tree (ScoreOptions::max_packed_tokens)
  int64_t tokens = 0;         ///< token positions run through the layers, padding not counted
};

/// Encodes a request as the harness's Hugging Face model does: trailing spaces
/// of the context move to the continuation; context + continuation is encoded
/// whole and the continuation is what follows the separately encoded
/// context's length; special tokens as the tokenizer adds them (harness 0.4.9),
/// or none when `add_special_tokens` is false (the default of harness 0.4.0 to
/// 0.4.8). An empty context becomes the BOS id (EOS without one).
EncodedRequest encode_request(const tokenize::Tokenizer& tokenizer, const LoglikelihoodRequest& request,
                              bool add_special_tokens = true);

/// Scores encoded requests. Inputs longer than max_length keep their last
/// tokens, as the harness truncates; requests with the same input tokens share
/// one row. Rows that begin with the same tokens (a context and its endings,
/// MMLU's few-shot examples) run those tokens once: as one packed row holding
/// their prefix tree, or through a KV cache (ScoreOptions::share_prefixes,
/// models on one device); the other rows are sorted by length and
/// right-padded into batches.
/// Works on the model's device (CPU or CUDA); the log-softmax runs in float32.
/// std::invalid_argument if a request has no continuation tokens. `stats`, if
/// given, receives what ran.
std::vector<LoglikelihoodResult> score_requests(const model::CausalLM& lm, const std::vector<EncodedRequest>& requests,
                                                const ScoreOptions& options = {}, ScoreStats* stats = nullptr);

/// How a task's results become metrics.
enum class TaskKind {
  MultipleChoice,  ///< one request per choice; acc (and acc_norm) from the argmax
  LastWord,        ///< one request per document; acc = is_greedy, perplexity = exp(-mean logprob)
};

/// One document of a task, as requests.
struct TaskItem {
  std::vector<LoglikelihoodRequest> requests;  ///< one per choice (one for LastWord)
  std::vector<std::string> choices;            ///< the choice texts whose lengths acc_norm divides by
  int64_t gold = 0;                            ///< index of the right choice
  std::string subject;                         ///< MMLU subject (empty elsewhere)
};

/// A task with its documents.
struct Task {
  std::string name;              ///< "piqa", "mmlu", ...
  TaskKind kind = TaskKind::MultipleChoice;
  bool acc_norm = false;         ///< whether the harness reports acc_norm for it
  std::vector<TaskItem> items;   ///< documents in the data's order
  std::filesystem::path source;  ///< the file or folder the documents came from
};

/// What loading reads.
struct TaskLoadOptions {
  int64_t limit = -1;                      ///< first N documents per task (MMLU: per subject); -1: all
  std::vector<std::string> mmlu_subjects;  ///< MMLU subjects to read; empty: all 57
};

/// The task names load_task knows, in a fixed order.
const std::vector<std::string>& task_names();
/// The 57 MMLU subjects, alphabetically.
const std::vector<std::string>& mmlu_subjects();

/// Reads task `name` from `<data_dir>/tasks/<name>/` (layouts in docs/evaluation.md).
/// std::invalid_argument for an unknown name or a missing file (naming the path
/// looked for); std::runtime_error naming the file and line for malformed data.
Task load_task(const std::string& name, const std::filesystem::path& data_dir, const TaskLoadOptions& options = {});
/// load_task for each name ("mmlu" included), all checked before any is returned.
std::vector<Task> load_tasks(const std::vector<std::string>& names, const std::filesystem::path& data_dir,
                             const TaskLoadOptions& options = {});

/// The harness's HellaSwag preprocess: strip, " [title]" -> ". ", every "[...]"
/// span removed, double spaces made single.
std::string hellaswag_preprocess(const std::string& text);

/// Metrics of one document.
struct ItemScore {
  std::vector<LoglikelihoodResult> results;  ///< one per request
  int64_t pred = 0;                          ///< argmax of the log-likelihoods
  int64_t pred_norm = 0;                     ///< argmax of log-likelihood / choice length in characters
  double acc = 0;                            ///< 1 if pred is gold (LastWord: is_greedy)
  double acc_norm = 0;                       ///< 1 if pred_norm is gold
};

/// A metric's value with the sample standard error of its mean.
struct MetricValue {
  double value = 0;      ///< mean over documents
  double std_error = 0;  ///< sample standard deviation / sqrt(n) (NaN below two documents)
};

/// The outcome of one task (or of one MMLU subject).
struct TaskResult {
  std::string name;  ///< task name (MMLU subject for subjects)
  TaskKind kind = TaskKind::MultipleChoice;
  int64_t items = 0;                   ///< documents scored
  MetricValue acc;                     ///< accuracy
  bool has_acc_norm = false;           ///< whether acc_norm is reported
  MetricValue acc_norm;                ///< length-normalised accuracy
  double perplexity = 0;               ///< LastWord tasks: exp(-mean continuation logprob)
  double acc_subject_mean = 0;         ///< MMLU: unweighted mean of the subject accuracies
  std::vector<TaskResult> subjects;    ///< MMLU: one per subject
  std::vector<ItemScore> item_scores;  ///< per document, in order
};

/// The metrics of `task` from its results (`results[i]` holds one result per
/// request of item i). MMLU's acc is the mean over all documents (the
/// harness's size-weighted group mean); its stderr pools the subjects' per
/// category (STEM, humanities, social sciences, other), then the categories.
TaskResult score_task(const Task& task, const std::vector<std::vector<LoglikelihoodResult>>& results);

/// Encodes and scores every request of every task in one batched pass, then scores each task.
std::vector<TaskResult> evaluate_tasks(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                       const std::vector<Task>& tasks, const ScoreOptions& options = {});

/// The harness's stderr of a mean: sqrt(sum (x - mean)^2 / (n - 1)) / sqrt(n); NaN for n < 2.
double mean_stderr(const std::vector<double>& values);
/// The harness's pooled stderr of a size-weighted group mean from its parts' stderrs and sizes.
double pooled_stderr(const std::vector<double>& stderrs, const std::vector<int64_t>& sizes);

/// A readable table: one line per task (and per MMLU subject when `subjects`).
std::string format_task_table(const std::vector<TaskResult>& results, bool subjects = false);
/// The results as a JSON object {"<task>": {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr",
/// "items"} ...} (lambada_openai: "acc", "perplexity"; mmlu: "subjects" too); NaN as null.
std::string task_results_json(const std::vector<TaskResult>& results);

}  // namespace cur4llm::eval
