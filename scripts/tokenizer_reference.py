#!/usr/bin/env python3
"""Reference token ids from Hugging Face transformers / tokenizers for every
tokenizer of tokenizers-real.tar.xz, on the wikitext-2 test text and on
tests/data/text/tokenizer_torture.txt. tests/test_tokenize_real.cpp compares
cur4llm's ids with the JSON files this writes (one per tokenizer) when they are
in tests/data/tokenizer_reference/.

Run from the repository root on a machine with transformers and tokenizers:

    python3 scripts/tokenizer_reference.py --tarball PATH/tokenizers-real.tar.xz \
        --wikitext PATH/wikitext-2-raw/wiki.test.raw --out tests/data/tokenizer_reference

Each file holds the ids of every torture line (no special tokens), of the whole
torture text (special tokens as the tokenizer adds them by default), and, for the
wikitext-2 test text (encoded whole, special tokens by default), the id count and
a 64-bit FNV-1a hash of each run of 4096 ids (ids as little-endian uint32).
"""
import argparse
import json
import os
import sys
import tarfile
import tempfile

CHUNK = 4096

# name, folder in the tarball, how cur4llm loads it ("folder": load_tokenizer(folder);
# "vocab_merges": load_gpt2_bpe(vocab.json, merges.txt); a file name: load_tokenizer_json(file)).
TOKENIZERS = [
    ("gpt2", "gpt2", "folder"),
    ("gpt2-vocab-merges", "gpt2", "vocab_merges"),
    ("gpt2-old-hub-json", "gpt2", "tokenizer.hub-format.restored.json"),
    ("llama2", "llama2", "folder"),
    ("mistral", "mistral", "folder"),
    ("phi-2", "phi-2", "folder"),
    ("phi-3-mini", "phi-3-mini", "folder"),
    ("falcon", "falcon", "folder"),
    ("pythia", "pythia", "folder"),
    ("smollm2", "smollm2", "folder"),
    # Its tokenizer.json is byte-level but tokenizer_config.json names LlamaTokenizer, whose
    # transformers 5 pipeline drops spaces and non-ASCII text: the file is read as tokenizers reads it.
    ("deepseek-coder", "deepseek-coder", "tokenizer.json"),
    # No tokenizer.json exists for OPT, and transformers 5 has no slow GPT2Tokenizer backend to read
    # vocab.json + merges.txt with: the same pipeline is built from them with tokenizers.
    ("opt", "opt", "opt_bpe"),
    ("qwen2.5", "qwen2.5", "folder"),
    ("llama3", "llama3", "folder"),
]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")


def fnv1a(ids):
    h = 0xCBF29CE484222325
    for v in ids:
        for b in int(v).to_bytes(4, "little"):
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def llama3_specials():
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|start_header_id|>",
             "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    return named + ["<|reserved_special_token_%d|>" % i for i in range(5, 256 - 5)]


def load(folder, loader):
    """An encode(text, add_special_tokens) function and a description of the route taken."""
    import transformers
    if loader == "vocab_merges":
        tok = transformers.GPT2Tokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"))
        return (lambda t, s: tok(t, add_special_tokens=s)["input_ids"]), "transformers GPT2Tokenizer(vocab, merges)"
    if loader == "opt_bpe":
        # OPT's GPT2Tokenizer: byte-level BPE, no prefix space, "</s>" (its bos) before the text
        # (add_bos_token), and its special tokens matched whole in the text.
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
        tok = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens(["</s>", "<pad>"])
        bos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="</s> $A", pair="</s> $A </s> $B",
                                                           special_tokens=[("</s>", bos)])
        return (lambda t, s: tok.encode(t, add_special_tokens=s).ids), "tokenizers BPE(vocab, merges) as GPT2Tokenizer"
    if loader != "folder":
        import tokenizers
        tok = tokenizers.Tokenizer.from_file(os.path.join(folder, loader))
        tok.no_truncation()
        tok.no_padding()
        return (lambda t, s: tok.encode(t, add_special_tokens=s).ids), "tokenizers Tokenizer.from_file"
    if os.path.basename(folder) == "llama3":
        from tokenizers import processors
        from transformers.convert_slow_tokenizer import TikTokenConverter
        specials = llama3_specials()
        tk = TikTokenConverter(vocab_file=os.path.join(folder, "tokenizer.model"), pattern=LLAMA3_PATTERN,
                               additional_special_tokens=specials).converted()
        tk.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", 128000)])
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin_of_text|>",
                                                   eos_token="<|end_of_text|>")
        return (lambda t, s: tok(t, add_special_tokens=s)["input_ids"]), "transformers TikTokenConverter"
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return (lambda t, s: tok(t, add_special_tokens=s)["input_ids"]), "transformers AutoTokenizer " + type(tok).__name__


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tarball", required=True, help="tokenizers-real.tar.xz")
    ap.add_argument("--wikitext", required=True, help="wikitext-2-raw/wiki.test.raw")
    ap.add_argument("--torture", default="tests/data/text/tokenizer_torture.txt")
    ap.add_argument("--out", required=True, help="output folder (tests/data/tokenizer_reference)")
    args = ap.parse_args()
    import tokenizers
    import transformers
    with open(args.torture, encoding="utf-8", newline="") as f:
        torture = f.read()
    with open(args.wikitext, encoding="utf-8", newline="") as f:
        wiki = f.read()
    # Lines split at "\n" only, as the C++ test splits them (not str.splitlines()).
    lines = torture.split("\n")
    os.makedirs(args.out, exist_ok=True)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.tarball) as tar:
            tar.extractall(tmp)
        for name, folder, loader in TOKENIZERS:
            path = os.path.join(tmp, "tokenizers", folder)
            try:
                encode, route = load(path, loader)
                wiki_ids = encode(wiki, True)
                record = {
                    "name": name,
                    "folder": folder,
                    "loader": loader,
                    "reference": route,
                    "transformers_version": transformers.__version__,
                    "tokenizers_version": tokenizers.__version__,
                    "torture_lines": [encode(line, False) for line in lines],
                    "torture": encode(torture, True),
                    "wikitext2_test": {
                        "count": len(wiki_ids),
                        "chunk": CHUNK,
                        "chunk_fnv1a": [fnv1a(wiki_ids[i:i + CHUNK]) for i in range(0, len(wiki_ids), CHUNK)],
                        "head": wiki_ids[:64],
                    },
                }
            except Exception as e:  # one tokenizer failing must not hide the others
                failed.append(name)
                print("%s: FAILED: %s: %s" % (name, type(e).__name__, e), file=sys.stderr)
                continue
            with open(os.path.join(args.out, name + ".json"), "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False, separators=(",", ":"))
                f.write("\n")
            print("%s: %s, %d wikitext-2 ids" % (name, route, len(wiki_ids)))
    if failed:
        sys.exit("no reference for: " + ", ".join(failed))


if __name__ == "__main__":
    main()
