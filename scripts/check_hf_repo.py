#!/usr/bin/env python3
"""Loads model folders (acur repositories written by build_acur_repo / quantize,
or ordinary Hugging Face folders) with transformers, as a user would:

    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    AutoTokenizer.from_pretrained(path)

and measures perplexity with cur4llm's protocol (docs/data.md): the text file
tokenized as a whole with the tokenizer's default special tokens, cut into
floor(N / seqlen) windows of seqlen tokens; each window's loss is the mean
next-token cross-entropy of its seqlen - 1 predictions; perplexity is exp of
the mean window loss. It also runs model.generate() for a few tokens.

With --sentencepiece, a folder that has a tokenizer.model is also scored on
the ids of SentencePiece itself (BOS first if the tokenizer adds one), which
are the ids cur4llm's C++ tokenizer gives for such a folder: that figure is
the one to compare with the C++ perplexity (docs/export.md).

Prints one JSON object per folder. With --expect PATH=PPL (repeatable), exits
with status 1 unless every such folder loaded with no missing or unexpected
keys, generated, and gave that perplexity within --rtol.

Example (GPU host, docs/export.md):
    python3 scripts/check_hf_repo.py out/stories260K-hf-acur90 --text tinystories_eval.txt \\
        --seqlen 512 --sentencepiece --expect out/stories260K-hf-acur90=12.29
"""

import argparse
import json
import math
import os
import sys
import time
import traceback


def window_nlls(model, ids, seqlen, batch_size, device, max_windows):
    import torch
    import torch.nn.functional as F

    n = len(ids) // seqlen
    if max_windows >= 0:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {seqlen}")
    all_ids = torch.tensor(ids[: n * seqlen], dtype=torch.long).view(n, seqlen)
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = all_ids[start:start + batch_size].to(device)
            logits = model(input_ids=batch).logits.float()
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="none"
            )
            out += loss.view(batch.shape[0], -1).double().mean(1).tolist()
    return out


def resave_check(model, tokenizer, path, device, dtype):
    """save_pretrained() of the loaded model and from_pretrained() of that copy give the same logits."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    out = {}
    try:
        ids = torch.arange(3, 35, dtype=torch.long).view(1, -1).to(device)
        with torch.no_grad():
            want = model(input_ids=ids).logits.float()
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            copy = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=True, dtype=dtype).to(device).eval()
            with torch.no_grad():
                got = copy(input_ids=ids).logits.float()
            out["files"] = sorted(os.listdir(tmp))
        out["max_abs_diff"] = float((got - want).abs().max())
    except Exception as e:  # reported, not fatal: the main check is loading the repository itself
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def perplexity(nlls):
    return math.exp(sum(nlls) / len(nlls))


def sentencepiece_ids(path, text, tokenizer):
    model_file = os.path.join(path, "tokenizer.model")
    if not os.path.isfile(model_file):
        return None
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_file)
    ids = sp.encode(text)
    probe = tokenizer("a")["input_ids"]
    if tokenizer.bos_token_id is not None and probe and probe[0] == tokenizer.bos_token_id:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def check(path, args, text, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = {"path": path}
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model, info = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=True, dtype=dtype, output_loading_info=True
    )
    model = model.to(device).eval()
    report["load_s"] = round(time.time() - t0, 3)
    report["class"] = type(model).__name__
    info = _as_dict(info)
    report["loading_info"] = {k: sorted(map(str, v)) if isinstance(v, (list, set, tuple)) else str(v)
                              for k, v in info.items() if v}
    report["missing_keys"] = len(info.get("missing_keys") or [])
    report["unexpected_keys"] = len(info.get("unexpected_keys") or [])
    acur = getattr(model.config, "acur", None)
    if isinstance(acur, dict):
        layers = acur.get("layers", {})
        report["acur_layers"] = len(layers)
        report["acur_kinds"] = sorted({spec.get("kind") for spec in layers.values()})
    report["modules"] = sorted({type(m).__name__ for m in model.modules() if "Acur" in type(m).__name__
                                or type(m).__name__ == "PackedTensor"})
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["meta_tensors"] = sum(1 for t in list(model.parameters()) + list(model.buffers()) if t.is_meta)

    if text is not None:
        t0 = time.time()
        ids = tokenizer(text)["input_ids"]
        nlls = window_nlls(model, ids, args.seqlen, args.batch_size, device, args.max_windows)
        report["ppl"] = perplexity(nlls)
        report["tokens"] = len(ids)
        report["windows"] = len(nlls)
        report["first_window_nll"] = nlls[:3]
        if args.sentencepiece:
            sp_ids = sentencepiece_ids(path, text, tokenizer)
            if sp_ids is not None:
                sp_nlls = window_nlls(model, sp_ids, args.seqlen, args.batch_size, device, args.max_windows)
                report["ppl_sentencepiece_ids"] = perplexity(sp_nlls)
                report["tokens_sentencepiece"] = len(sp_ids)
        report["eval_s"] = round(time.time() - t0, 3)

    if args.resave:
        report["resave"] = resave_check(model, tokenizer, path, device, dtype)

    if args.generate > 0:
        prompt = tokenizer(args.prompt, return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=args.generate, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        new = out[0, prompt["input_ids"].shape[1]:]
        report["generated_tokens"] = int(new.numel())
        report["generated"] = tokenizer.decode(new, skip_special_tokens=True)
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="model folders")
    ap.add_argument("--text", help="evaluation text file (read as UTF-8, used whole)")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--max_windows", type=int, default=-1, help="only the first N windows (-1: all)")
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--sentencepiece", action="store_true", help="also score SentencePiece's own ids")
    ap.add_argument("--generate", type=int, default=16, help="tokens to generate (0: none)")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--resave", action="store_true", help="also check save_pretrained() + from_pretrained()")
    ap.add_argument("--expect", action="append", default=[], metavar="PATH=PPL")
    ap.add_argument("--rtol", type=float, default=1e-3)
    args = ap.parse_args()

    import torch
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps({"environment": env}), flush=True)
    text = None
    if args.text:
        with open(args.text, encoding="utf-8") as f:
            text = f.read()

    expected = {}
    for item in args.expect:
        path, _, value = item.rpartition("=")
        expected[os.path.normpath(path)] = float(value)
    ok = True
    for path in args.paths:
        try:
            report = check(path, args, text, device, dtype)
        except Exception as e:  # report and go on with the next folder
            report = {"path": path, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        want = expected.get(os.path.normpath(path))
        if want is not None:
            got = report.get("ppl_sentencepiece_ids", report.get("ppl"))
            report["expected_ppl"] = want
            passed = (got is not None and abs(got - want) <= args.rtol * want and report.get("missing_keys") == 0
                      and report.get("unexpected_keys") == 0 and report.get("generated_tokens", 0) > 0)
            if got is not None:
                report["relative_difference"] = (got - want) / want
            report["pass"] = passed
            ok = ok and passed
        print(json.dumps(report), flush=True)
    return 0 if ok else 1


def _as_dict(info):
    """transformers' loading info, whether a dict or an object with fields."""
    if isinstance(info, dict):
        return info
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys", "conversion_errors", "error_msgs")
    return {k: getattr(info, k) for k in keys if hasattr(info, k)}


def _cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    sys.exit(main())
