#!/usr/bin/env python3
"""Trains a small OPT on TinyStories in a few minutes on one GPU, for measuring
the compression methods on the OPT code path (docs/results.md). Not committed:
the weights; committed: this script.

    python3 benchmarks/train_opt_tinystories.py --shared ../shared --out /tmp/opt-tinystories

Data: ../shared/data/text/tinystories/tinystories_val_head.txt and
tinystories_calib.txt (the calibration text is in-distribution training data,
as an LLM's calibration set usually is); the last 5% of the joined text is held
out for early stopping. tinystories_eval.txt is never trained on: it is the
evaluation text. Tokenizer: the byte-level BPE of the tiny-shakespeare-opt
fixture (tests/data/models/tiny-shakespeare-opt, 601 tokens; BOS
<|begin_of_text|> first by default).

Writes to --out: config.json, model.safetensors (fp32), tokenizer.json,
tokenizer_config.json, and train_report.json (steps, losses, time, and
transformers' perplexity of the eval text at seqlen 512 in fp32, one BOS at the
start, floor(N / 512) windows: the dense number acur must reproduce).
"""
import argparse
import json
import math
import os
import shutil
import time

import torch
from tokenizers import Tokenizer
from transformers import OPTConfig, OPTForCausalLM


def windows_ppl(model, ids, seqlen, device, batch=32):
    ids = torch.tensor(ids, dtype=torch.int64)
    n = ids.numel() // seqlen
    chunks = ids[: n * seqlen].view(n, seqlen)
    nll = []
    with torch.no_grad():
        for i in range(0, n, batch):
            x = chunks[i:i + batch].to(device)
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1),
                                                     reduction="none").view(x.size(0), -1).mean(1)
            nll.append(loss.cpu())
    return float(torch.exp(torch.cat(nll).mean())), n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", required=True, help="the shared/ folder with data/")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), ".."), help="repository root")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--max_minutes", type=float, default=4.0, help="stop training after this long")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True

    tok_dir = os.path.join(args.repo, "tests", "data", "models", "tiny-shakespeare-opt")
    tok = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    text_dir = os.path.join(args.shared, "data", "text", "tinystories")
    texts = []
    for name in ("tinystories_val_head.txt", "tinystories_calib.txt"):
        with open(os.path.join(text_dir, name), encoding="utf-8") as f:
            texts.append(f.read())
    ids = torch.tensor(tok.encode("\n".join(texts), add_special_tokens=False).ids, dtype=torch.int64)
    cut = int(ids.numel() * 0.95)
    train_ids, held_ids = ids[:cut], ids[cut:]

    vocab = tok.get_vocab_size(with_added_tokens=True)
    cfg = OPTConfig(vocab_size=vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, ffn_dim=4 * args.hidden,
                    num_attention_heads=4, max_position_embeddings=args.seqlen, word_embed_proj_dim=args.hidden,
                    do_layer_norm_before=True, dropout=0.1, attention_dropout=0.0, pad_token_id=vocab - 1,
                    bos_token_id=tok.token_to_id("<|begin_of_text|>"), eos_token_id=tok.token_to_id("<|end_of_text|>"))
    model = OPTForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.05)
    held = held_ids[: (held_ids.numel() // args.seqlen) * args.seqlen].view(-1, args.seqlen).to(device)

    def held_loss():
        model.eval()
        with torch.no_grad():
            loss = model(input_ids=held, labels=held).loss.item()
        model.train()
        return loss

    t0 = time.time()
    best, best_state, best_step, log = float("inf"), None, -1, []
    model.train()
    step = 0
    for step in range(args.steps):
        starts = torch.randint(0, train_ids.numel() - args.seqlen - 1, (args.batch,))
        x = torch.stack([train_ids[s:s + args.seqlen] for s in starts.tolist()]).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            h = held_loss()
            log.append({"step": step, "train_loss": loss.item(), "held_loss": h, "s": time.time() - t0})
            print(json.dumps(log[-1]), flush=True)
            if h < best:
                best, best_step = h, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if time.time() - t0 > 60 * args.max_minutes:
            break
    train_s = time.time() - t0
    model.load_state_dict(best_state)
    model.eval()

    shutil.rmtree(args.out, ignore_errors=True)
    model.to("cpu").float().save_pretrained(args.out)
    shutil.copy(os.path.join(tok_dir, "tokenizer.json"), os.path.join(args.out, "tokenizer.json"))
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                   "eos_token": "<|end_of_text|>", "model_max_length": args.seqlen}, f, indent=1)

    model = OPTForCausalLM.from_pretrained(args.out, dtype=torch.float32).to(device).eval()
    with open(os.path.join(text_dir, "tinystories_eval.txt"), encoding="utf-8") as f:
        eval_ids = tok.encode(f.read()).ids  # default special tokens: BOS first
    ppl, windows = windows_ppl(model, eval_ids, args.seqlen, device)
    report = {"steps_run": step + 1, "best_step": best_step, "best_held_loss": best, "train_s": train_s,
              "train_tokens": int(train_ids.numel()), "params": sum(p.numel() for p in model.parameters()),
              "config": {"hidden": args.hidden, "layers": args.layers, "ffn": 4 * args.hidden, "vocab": vocab},
              "eval_ppl_seqlen512": ppl, "eval_windows": windows, "eval_tokens": len(eval_ids),
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "log": log}
    with open(os.path.join(args.out, "train_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "log"}))


if __name__ == "__main__":
    main()
