// tokenizer.model through libsentencepiece: the ids are SentencePiece's own
// (its normalizer collapses runs of spaces, unlike a converted tokenizer.json).
//
// Why dlopen: Debian's libsentencepiece.so.0 carries its own copy of
// protobuf-lite and exports it. Loaded at start-up next to LibTorch's
// libprotobuf.so.32, its copy interposes libprotobuf's own symbols and every
// program linked with libcur4llm crashes in libprotobuf's static initializer.
// So the library is opened on first use with RTLD_LOCAL | RTLD_DEEPBIND (its
// protobuf stays private to it), the processor is built through its
// constructor symbol and used through virtual calls only, and this file makes
// no link-time reference to libsentencepiece (which --as-needed then drops).

#include "cur4llm/tokenize/tokenizer.h"

#include <sentencepiece_processor.h>

#include <dlfcn.h>

#include <new>
#include <stdexcept>

namespace cur4llm::tokenize {
namespace {

namespace spm = sentencepiece;

// The few non-virtual functions of libsentencepiece that are needed, looked up by symbol.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUR4LLM_CLANG_ASAN 1
#endif
#endif

class SentencePieceLibrary {
 public:
  static const SentencePieceLibrary& get() {
    static const SentencePieceLibrary lib;
    return lib;
  }
  void (*construct)(void*) = nullptr;               // SentencePieceProcessor::SentencePieceProcessor()
  void (*destroy_status)(void*) = nullptr;          // util::Status::~Status()
  const char* (*status_message)(const void*) = nullptr;  // util::Status::error_message()

 private:
  SentencePieceLibrary() {
#if defined(__SANITIZE_ADDRESS__) || defined(CUR4LLM_CLANG_ASAN)
    // AddressSanitizer refuses RTLD_DEEPBIND, and without it the library's protobuf would clash.
    throw std::runtime_error("libsentencepiece.so.0 cannot be used in a build with AddressSanitizer "
                             "(it must be opened with RTLD_DEEPBIND, which the sanitizer does not allow)");
#endif
    void* handle = dlopen("libsentencepiece.so.0", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!handle) throw std::runtime_error(std::string("cannot load libsentencepiece.so.0: ") + dlerror());
    auto sym = [&](const char* name) {
      void* p = dlsym(handle, name);
      if (!p) throw std::runtime_error(std::string("libsentencepiece.so.0 lacks ") + name);
      return p;
    };
    construct = reinterpret_cast<void (*)(void*)>(sym("_ZN13sentencepiece22SentencePieceProcessorC1Ev"));
    destroy_status = reinterpret_cast<void (*)(void*)>(sym("_ZN13sentencepiece4util6StatusD1Ev"));
    status_message = reinterpret_cast<const char* (*)(const void*)>(
        sym("_ZNK13sentencepiece4util6Status13error_messageEv"));
  }
};

// Holds a util::Status returned by a virtual call, and destroys it through the library.
class Status {
 public:
  template <typename Call>
  explicit Status(Call&& call) {
    new (storage_) spm::util::Status(call());  // guaranteed elision: no move, no temporary
  }
  ~Status() { SentencePieceLibrary::get().destroy_status(storage_); }
  Status(const Status&) = delete;
  Status& operator=(const Status&) = delete;
  bool ok() const { return get()->ok(); }
  std::string message() const { return SentencePieceLibrary::get().status_message(storage_); }

 private:
  const spm::util::Status* get() const { return std::launder(reinterpret_cast<const spm::util::Status*>(storage_)); }
  alignas(spm::util::Status) unsigned char storage_[sizeof(spm::util::Status)];
};

// Owns a SentencePieceProcessor made by the library's constructor.
class Processor {
 public:
  Processor() {
    const auto& lib = SentencePieceLibrary::get();
    storage_ = ::operator new(sizeof(spm::SentencePieceProcessor));
    lib.construct(storage_);
    sp_ = static_cast<spm::SentencePieceProcessor*>(storage_);
  }
  ~Processor() {
    sp_->~SentencePieceProcessor();  // virtual: runs the library's destructor
    ::operator delete(storage_);
  }
  Processor(const Processor&) = delete;
  Processor& operator=(const Processor&) = delete;
  spm::SentencePieceProcessor* operator->() const { return sp_; }

 private:
  void* storage_ = nullptr;
  spm::SentencePieceProcessor* sp_ = nullptr;
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::filesystem::path& model_file, const SentencePieceOptions& options)
      : options_(options), source_(model_file.string()) {
    if (!std::filesystem::is_regular_file(model_file))
      throw std::runtime_error(source_ + ": no such SentencePiece model file");
    const Status status([&] { return sp_->Load(source_); });
    if (!status.ok()) throw std::runtime_error(source_ + ": cannot load SentencePiece model: " + status.message());
    if (options_.add_bos && sp_->bos_id() < 0)
      throw std::invalid_argument(source_ + ": add_bos is set but the model has no BOS piece");
    if (options_.add_eos && sp_->eos_id() < 0)
      throw std::invalid_argument(source_ + ": add_eos is set but the model has no EOS piece");
  }

  std::vector<int64_t> encode(const std::string& text, const EncodeOptions& options) const override {
    std::vector<int> pieces;
    const Status status([&] { return sp_->Encode(text, &pieces); });
    if (!status.ok()) throw std::runtime_error(source_ + ": encode failed: " + status.message());
    std::vector<int64_t> ids;
    ids.reserve(pieces.size() + 2);
    if (options.add_special_tokens && options_.add_bos) ids.push_back(sp_->bos_id());
    ids.insert(ids.end(), pieces.begin(), pieces.end());
    if (options.add_special_tokens && options_.add_eos) ids.push_back(sp_->eos_id());
    return ids;
  }

  std::string decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> pieces;
    pieces.reserve(ids.size());
    const int64_t n = vocab_size();
    for (int64_t id : ids) {
      if (id < 0 || id >= n)
        throw std::invalid_argument("decode: id " + std::to_string(id) + " is out of range [0, " + std::to_string(n) + ")");
      pieces.push_back(static_cast<int>(id));
    }
    std::string text;
    const Status status([&] { return sp_->Decode(pieces, &text); });  // control pieces (BOS/EOS) decode to nothing
    if (!status.ok()) throw std::runtime_error(source_ + ": decode failed: " + status.message());
    return text;
  }

  int64_t vocab_size() const override { return sp_->GetPieceSize(); }
  std::optional<int64_t> bos_id() const override {
    return sp_->bos_id() >= 0 ? std::optional<int64_t>(sp_->bos_id()) : std::nullopt;
  }
  std::optional<int64_t> eos_id() const override {
    return sp_->eos_id() >= 0 ? std::optional<int64_t>(sp_->eos_id()) : std::nullopt;
  }
  bool adds_bos() const override { return options_.add_bos; }
  std::string describe() const override { return "SentencePiece (" + source_ + ")"; }

 private:
  Processor sp_;
  SentencePieceOptions options_;
  std::string source_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const std::filesystem::path& model_file,
                                              const SentencePieceOptions& options) {
  return std::make_unique<SentencePieceTokenizer>(model_file, options);
}

}  // namespace cur4llm::tokenize
