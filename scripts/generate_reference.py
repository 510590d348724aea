#!/usr/bin/env python3
"""Greedy generation references from transformers' generate() for cur4llm's tests.

For every model folder under --models (tests/data/models) and for the extra
folders given with --extra (e.g. stories260K-hf), loads the model in float32
on the CPU and runs generate() greedily (do_sample=False) for three cases:
two prompts alone and a batch of three prompts of different lengths (left
padding, with an attention mask). Prompts are text through the model's
tokenizer where the folder has one, else fixed token ids. The end-of-sequence
token is disabled, so that every row gets max_new_tokens tokens:
min(64, max_position_embeddings - longest prompt). Each prompt's tokens are
also checked against a plain greedy loop of full forward passes (no cache).

Writes OUT/<folder name>.json per model:
  {"model": NAME, "location": "fixture" | "shared", "transformers_version": ..,
   "cases": [{"name", "max_new_tokens", "prompts", "prompt_ids", "generated_ids"}]}
prompt_ids are unpadded; generated_ids hold the new tokens only.

    python3 scripts/generate_reference.py --models tests/data/models \\
        --extra ../shared/data/models/stories260K-hf --out tests/data/generate_reference

Folders transformers cannot load are skipped and named on stderr.
"""
import argparse
import copy
import json
import os
import random
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

MAX_NEW = 64

TEXT_PROMPTS = {
    "tiny-shakespeare-opt": ["ROMEO:\nWhat light", "First Citizen:\nBefore we proceed any further, hear me speak.",
                             "KING"],
    "stories260K-hf": ["Once upon a time", "Lily and Tom went to the park. They saw a big", "The"],
}


def id_prompts(vocab, seed):
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in (7, 13, 3)]


def plain_greedy(model, ids, n):
    """Greedy tokens from full forward passes, no cache, no end-of-sequence."""
    seq = torch.tensor([ids])
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(input_ids=seq).logits[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return out


def run_generate(model, prompts, n, pad_id):
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p)
        mask[i, longest - len(p):] = 1
    gc = copy.deepcopy(model.generation_config)
    gc.do_sample = False
    gc.num_beams = 1
    gc.max_new_tokens = n
    gc.min_new_tokens = None
    gc.max_length = None
    gc.eos_token_id = None
    gc.pad_token_id = pad_id
    gc.temperature = None
    gc.top_k = None
    gc.top_p = None
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
    return [row[longest:].tolist() for row in out]


def reference(folder, location):
    name = os.path.basename(os.path.normpath(folder))
    # Eager attention, as the parity fixtures: transformers' SDPA path leaves out Gemma-2's
    # attention soft-capping, so its generate() would not be the model's own greedy decoding.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    model.generation_config.eos_token_id = None  # every row runs to max_new_tokens
    config = model.config
    context = getattr(config, "max_position_embeddings", None) or 4096
    texts = None
    tokenizer = None
    if name in TEXT_PROMPTS:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: tokenizer not loaded ({e}); fixed token ids instead", file=sys.stderr)
    if tokenizer is not None:
        texts = TEXT_PROMPTS[name]
        prompts = [tokenizer(t)["input_ids"] for t in texts]
    else:
        prompts = id_prompts(config.vocab_size, 1234)
    pad_id = 0
    cases = []
    groups = [("single_0", [0]), ("single_1", [1]), ("batch", [0, 1, 2])]
    for case_name, rows in groups:
        ps = [prompts[r] for r in rows]
        n = min(MAX_NEW, context - max(len(p) for p in ps))
        generated = run_generate(model, ps, n, pad_id)
        for p, g in zip(ps, generated):
            if len(g) != n:
                raise RuntimeError(f"{name}/{case_name}: {len(g)} tokens instead of {n}")
            if len(ps) == 1:
                plain = plain_greedy(model, p, n)
                if plain != g:
                    raise RuntimeError(f"{name}/{case_name}: generate() differs from the plain greedy loop")
        cases.append({"name": case_name, "max_new_tokens": n,
                      "prompts": [texts[r] for r in rows] if texts else None,
                      "prompt_ids": ps, "generated_ids": generated})
    return {"model": name, "location": location, "transformers_version": transformers.__version__,
            "torch_version": torch.__version__, "dtype": "float32", "device": "cpu", "eos": "disabled",
            "cases": cases}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tests/data/models", help="folder of fixture model folders")
    ap.add_argument("--extra", action="append", default=[],
                    help="another model folder (read by the tests from the shared data's models/)")
    ap.add_argument("--out", required=True, help="output folder for the JSON files")
    args = ap.parse_args()
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    jobs = [(os.path.join(args.models, d), "fixture") for d in sorted(os.listdir(args.models))
            if os.path.isfile(os.path.join(args.models, d, "config.json"))]
    jobs += [(e, "shared") for e in args.extra]
    written = 0
    for folder, location in jobs:
        name = os.path.basename(os.path.normpath(folder))
        try:
            ref = reference(folder, location)
        except Exception as e:  # noqa: BLE001
            print(f"skipped {name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        path = os.path.join(args.out, name + ".json")
        with open(path, "w") as f:
            json.dump(ref, f, indent=1)
            f.write("\n")
        written += 1
        print(f"{path}: {len(ref['cases'])} cases, {ref['cases'][0]['max_new_tokens']} new tokens")
    print(f"{written} of {len(jobs)} models written")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
