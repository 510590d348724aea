#!/usr/bin/env python3
"""transformers' generate() throughput on a model of a config's shape (random weights),
for the side-by-side comparison with bench_decode on one GPU.

  python3 benchmarks/hf_decode.py --config benchmarks/configs/llama-7b.json --dtype bf16 \
      --batch 1,16 --prompt_len 512 --new_tokens 256 [--cache dynamic,static]

Prints one JSON object per (cache, batch): the prefill (one forward of the prompt with
use_cache) and generate()'s greedy decoding of --new_tokens tokens, min_new_tokens set so
that every run decodes all of them; decode tokens/s = batch * (new_tokens - 1) /
(generate time - prefill time). Timings only.
"""
import argparse
import json
import time

import torch
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--batch", default="1")
    ap.add_argument("--prompt_len", type=int, default=512)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--cache", default="dynamic")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    with open(args.config) as f:
        fields = json.load(f)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    model.eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None

    def sync_time(fn):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    for cache in args.cache.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            ids = torch.randint(0, config.vocab_size, (batch, args.prompt_len), device="cuda")
            mask = torch.ones_like(ids)
            kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                      attention_mask=mask)
            if cache != "dynamic":
                kw["cache_implementation"] = cache
            with torch.inference_mode():
                model.generate(ids, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
                prefill_s = sync_time(lambda: model(ids, attention_mask=mask, use_cache=True))
                out = {}
                total_s = sync_time(lambda: out.setdefault("ids", model.generate(ids, **kw)))
            produced = out["ids"].shape[1] - args.prompt_len
            decode_s = total_s - prefill_s
            print(json.dumps({
                "benchmark": "hf_generate", "source": args.config, "dtype": args.dtype, "cache": cache,
                "batch": batch, "prompt_len": args.prompt_len, "new_tokens": produced,
                "device_name": torch.cuda.get_device_name(), "torch": torch.__version__,
                "transformers": transformers.__version__,
                "prefill_s": prefill_s, "prefill_tokens_per_s": batch * args.prompt_len / prefill_s,
                "generate_s": total_s, "decode_tokens_per_s": batch * (produced - 1) / decode_s,
                "peak_device_memory_bytes": torch.cuda.max_memory_allocated()}), flush=True)


if __name__ == "__main__":
    main()
