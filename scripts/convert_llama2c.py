#!/usr/bin/env python3
"""Converts a llama2.c checkpoint and its SentencePiece tokenizer into a
Hugging Face LLaMA folder that cur4llm (and transformers) can load.

    python3 scripts/convert_llama2c.py stories260K.bin tok512.model stories260K-hf

Input: a checkpoint in llama2.c's original export format ("version 0"): a
header of 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size, seq_len; a negative vocab_size means the classifier
is stored separately from the token embedding), then the fp32 weights, each
kind for all layers in turn: token embedding, attention RMSNorm, wq, wk, wv,
wo, FFN RMSNorm, w1, w2, w3, final RMSNorm, the RoPE tables (cos and sin,
seq_len x head_dim/2 each; optional, ignored), and the classifier when it is
not shared.

Output folder: config.json, model.safetensors (fp32), tokenizer.model (the
SentencePiece file, copied) and tokenizer_config.json. llama2.c rotates
adjacent pairs (2i, 2i+1) of each head in RoPE, Hugging Face LLaMA rotates the
two halves of each head, so the rows of every q_proj and k_proj weight are
reordered per head: within a head, row 2i + t moves to t * head_dim/2 + i.
lm_head is always written as its own tensor (tie_word_embeddings false).

Only the Python standard library is used. The output folder must not exist or
must be empty; the files are written to a temporary folder beside it first, so
a failed run leaves nothing half-written.
"""

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile

HEADER_FORMAT = "<7i"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
FLOAT_SIZE = 4


class ConversionError(Exception):
    """A user-facing error: bad input file or output folder."""


def read_header(data, path):
    """Returns the checkpoint's hyperparameters as a dict."""
    if len(data) < HEADER_SIZE:
        raise ConversionError(f"{path}: too short for a llama2.c header ({len(data)} bytes)")
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack_from(HEADER_FORMAT, data, 0)
    shared = vocab > 0
    vocab = abs(vocab)
    for name, value in (("dim", dim), ("hidden_dim", hidden), ("n_layers", layers),
                        ("n_heads", heads), ("n_kv_heads", kv_heads), ("vocab_size", vocab),
                        ("seq_len", seq_len)):
        if value <= 0 or value > 1 << 20:
            raise ConversionError(f"{path}: header field {name} = {value} is not a plausible size "
                                  "(is this a llama2.c version-0 checkpoint?)")
    if dim % heads != 0 or heads % kv_heads != 0:
        raise ConversionError(f"{path}: dim {dim}, n_heads {heads} and n_kv_heads {kv_heads} "
                              "do not divide evenly")
    head_dim = dim // heads
    if head_dim % 2 != 0:
        raise ConversionError(f"{path}: head dimension {head_dim} is odd; RoPE needs it even")
    return {"dim": dim, "hidden": hidden, "layers": layers, "heads": heads,
            "kv_heads": kv_heads, "vocab": vocab, "seq_len": seq_len,
            "shared": shared, "head_dim": head_dim}


def layout(p, with_rope_tables):
    """Lists (name, rows, cols, count) of the stored arrays in file order."""
    d, h, n = p["dim"], p["hidden"], p["layers"]
    kv_dim = p["kv_heads"] * p["head_dim"]
    arrays = [
        ("tok_embeddings", p["vocab"], d, 1),
        ("attention_norm", 1, d, n),
        ("wq", d, d, n),
        ("wk", kv_dim, d, n),
        ("wv", kv_dim, d, n),
        ("wo", d, d, n),
        ("ffn_norm", 1, d, n),
        ("w1", h, d, n),
        ("w2", d, h, n),
        ("w3", h, d, n),
        ("norm", 1, d, 1),
    ]
    if with_rope_tables:
        arrays.append(("freq_cos", p["seq_len"], p["head_dim"] // 2, 1))
        arrays.append(("freq_sin", p["seq_len"], p["head_dim"] // 2, 1))
    if not p["shared"]:
        arrays.append(("output", p["vocab"], d, 1))
    return arrays


def split_arrays(data, p, path):
    """Cuts the weight bytes into {name: [bytes per layer]}, checking the file size."""
    body = len(data) - HEADER_SIZE
    sizes = {}
    for with_tables in (True, False):
        arrays = layout(p, with_tables)
        sizes[with_tables] = sum(r * c * k for _, r, c, k in arrays) * FLOAT_SIZE
        if sizes[with_tables] == body:
            break
    else:
        raise ConversionError(
            f"{path}: {body} bytes of weights after the header, but the header "
            f"(dim {p['dim']}, hidden_dim {p['hidden']}, {p['layers']} layers, "
            f"{p['heads']}/{p['kv_heads']} heads, vocab {p['vocab']}, seq_len {p['seq_len']}, "
            f"{'shared' if p['shared'] else 'separate'} classifier) needs "
            f"{sizes[True]} (with RoPE tables) or {sizes[False]} (without)")
    out = {}
    offset = HEADER_SIZE
    for name, rows, cols, count in arrays:
        size = rows * cols * FLOAT_SIZE
        out[name] = [data[offset + i * size: offset + (i + 1) * size] for i in range(count)]
        offset += size * count
    return out


def rope_rows_to_halves(weight, heads, head_dim, cols):
    """Reorders the rows of a q/k weight from llama2.c's interleaved RoPE to HF's halves."""
    row = cols * FLOAT_SIZE
    half = head_dim // 2
    parts = []
    for h in range(heads):
        base = h * head_dim
        for t in range(2):
            for i in range(half):
                src = (base + 2 * i + t) * row
                parts.append(weight[src: src + row])
    return b"".join(parts)


def hf_tensors(arrays, p):
    """Returns {hf_name: (shape, bytes)} for the Hugging Face LLaMA layout."""
    d, h = p["dim"], p["hidden"]
    kv_dim = p["kv_heads"] * p["head_dim"]
    t = {
        "model.embed_tokens.weight": ([p["vocab"], d], arrays["tok_embeddings"][0]),
        "model.norm.weight": ([d], arrays["norm"][0]),
        "lm_head.weight": ([p["vocab"], d],
                           arrays["tok_embeddings"][0] if p["shared"] else arrays["output"][0]),
    }
    for i in range(p["layers"]):
        prefix = f"model.layers.{i}."
        t[prefix + "input_layernorm.weight"] = ([d], arrays["attention_norm"][i])
        t[prefix + "post_attention_layernorm.weight"] = ([d], arrays["ffn_norm"][i])
        t[prefix + "self_attn.q_proj.weight"] = (
            [d, d], rope_rows_to_halves(arrays["wq"][i], p["heads"], p["head_dim"], d))
        t[prefix + "self_attn.k_proj.weight"] = (
            [kv_dim, d], rope_rows_to_halves(arrays["wk"][i], p["kv_heads"], p["head_dim"], d))
        t[prefix + "self_attn.v_proj.weight"] = ([kv_dim, d], arrays["wv"][i])
        t[prefix + "self_attn.o_proj.weight"] = ([d, d], arrays["wo"][i])
        t[prefix + "mlp.gate_proj.weight"] = ([h, d], arrays["w1"][i])
        t[prefix + "mlp.down_proj.weight"] = ([d, h], arrays["w2"][i])
        t[prefix + "mlp.up_proj.weight"] = ([h, d], arrays["w3"][i])
    return t


def safetensors_bytes(tensors):
    """Serializes {name: (shape, fp32 bytes)} in the safetensors format.

    The format: an 8-byte little-endian header length, a JSON header (padded
    with spaces to a multiple of 8) mapping each name to its dtype, shape and
    [begin, end) byte offsets in the data that follows, then the data.
    Tensors are stored in name order.
    """
    names = sorted(tensors)
    entries = ['"__metadata__":{"format":"pt"}']
    offset = 0
    for name in names:
        shape, blob = tensors[name]
        end = offset + len(blob)
        entries.append(json.dumps(name) + ':{"dtype":"F32","shape":' +
                       json.dumps(shape, separators=(",", ":")) +
                       f',"data_offsets":[{offset},{end}]}}')
        offset = end
    header = ("{" + ",".join(entries) + "}").encode("utf-8")
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + b"".join(tensors[n][1] for n in names)


def config_json(p):
    """The config.json of the converted model."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p["dim"],
        "intermediate_size": p["hidden"],
        "num_hidden_layers": p["layers"],
        "num_attention_heads": p["heads"],
        "num_key_value_heads": p["kv_heads"],
        "vocab_size": p["vocab"],
        "max_position_embeddings": p["seq_len"],
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
        "attention_bias": False,
    }
    return json.dumps(config, indent=2)


def tokenizer_config_json(p):
    """The tokenizer_config.json of the converted model (SentencePiece, BOS added)."""
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": p["seq_len"],
    }
    return json.dumps(config, indent=2) + "\n"


def check_sentencepiece(path, vocab):
    """Rejects a tokenizer file that is clearly not a SentencePiece model."""
    with open(path, "rb") as f:
        head = f.read(2)
    # A SentencePiece ModelProto starts with field 1 (pieces), wire type 2: tag byte 0x0a.
    if len(head) < 2 or head[0] != 0x0A:
        raise ConversionError(f"{path}: not a SentencePiece .model file "
                              "(llama2.c's tok*.bin is a different format; use the .model file)")


def convert(checkpoint, tokenizer, out_dir):
    """Writes the Hugging Face folder out_dir; raises ConversionError on bad input."""
    try:
        with open(checkpoint, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConversionError(f"{checkpoint}: cannot read ({e.strerror})")
    p = read_header(data, checkpoint)
    arrays = split_arrays(data, p, checkpoint)
    try:
        check_sentencepiece(tokenizer, p["vocab"])
    except OSError as e:
        raise ConversionError(f"{tokenizer}: cannot read ({e.strerror})")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise ConversionError(f"{out_dir}: exists and is not an empty folder; "
                              "choose a new output folder")

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".convert_llama2c-", dir=parent)
    try:
        with open(os.path.join(tmp, "model.safetensors"), "wb") as f:
            f.write(safetensors_bytes(hf_tensors(arrays, p)))
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            f.write(config_json(p))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            f.write(tokenizer_config_json(p))
        shutil.copyfile(tokenizer, os.path.join(tmp, "tokenizer.model"))
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return p


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Convert a llama2.c checkpoint (.bin) and its SentencePiece tokenizer "
                    "(.model) into a Hugging Face LLaMA folder.")
    parser.add_argument("checkpoint", help="llama2.c checkpoint, e.g. stories260K.bin")
    parser.add_argument("tokenizer", help="SentencePiece model, e.g. tok512.model")
    parser.add_argument("output", help="output folder (must not exist or be empty)")
    args = parser.parse_args(argv)
    try:
        p = convert(args.checkpoint, args.tokenizer, args.output)
    except (ConversionError, OSError) as e:
        print(f"convert_llama2c: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}: LLaMA, dim {p['dim']}, {p['layers']} layers, "
          f"{p['heads']}/{p['kv_heads']} heads, vocab {p['vocab']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
