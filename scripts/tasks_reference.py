#!/usr/bin/env python3
"""Reference scores for cur4llm's zero-shot tasks, with transformers and torch.

Follows lm-evaluation-harness 0.4.9's definitions of the tasks (prompt,
choices, target delimiter " ", HellaSwag preprocessing, MMLU 5-shot from dev)
and of its Hugging Face model's log-likelihood (context and continuation
encoded whole and split where the separately encoded context ends; BOS as the
tokenizer adds it; inputs cut to the model's max_position_embeddings from the
left). Reads the task files in the layout docs/evaluation.md describes.

Reference mode: per-item log-likelihoods, greedy flags and accuracies of the
first --limit items of every task (MMLU: --mmlu_limit items of every subject),
in float32, one request per forward pass, written to OUT/<model folder name>.json:

    python3 scripts/tasks_reference.py --model MODEL_FOLDER --data_dir DATA --out OUT [--device cuda]

Timing mode: items/s of hellaswag and mmlu on a random-weight model of
--config's shape (LLaMA-7B by default) in --dtype, requests batched as the
harness batches them (longest first, right padding, one row per distinct input):

    python3 scripts/tasks_reference.py --time --tokenizer TOKENIZER_FOLDER --data_dir DATA [--device cuda]
"""
import argparse
import csv
import json
import math
import os
import re
import sys
import time

TASKS = ["piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa", "boolq",
         "lambada_openai", "mathqa", "mmlu"]
ACC_NORM = {"piqa", "hellaswag", "arc_easy", "arc_challenge", "openbookqa", "mathqa"}
MMLU_SUBJECTS = """abstract_algebra anatomy astronomy business_ethics clinical_knowledge college_biology
college_chemistry college_computer_science college_mathematics college_medicine college_physics computer_security
conceptual_physics econometrics electrical_engineering elementary_mathematics formal_logic global_facts
high_school_biology high_school_chemistry high_school_computer_science high_school_european_history
high_school_geography high_school_government_and_politics high_school_macroeconomics high_school_mathematics
high_school_microeconomics high_school_physics high_school_psychology high_school_statistics high_school_us_history
high_school_world_history human_aging human_sexuality international_law jurisprudence logical_fallacies
machine_learning management marketing medical_genetics miscellaneous moral_disputes moral_scenarios nutrition
philosophy prehistory professional_accounting professional_law professional_medicine professional_psychology
public_relations security_studies sociology us_foreign_policy virology world_religions""".split()


# ----------------------------------------------------------------------------- documents
# Each document becomes (requests, choices, gold): requests are (context, continuation)
# pairs, choices the strings acc_norm measures (len() in characters).

def jsonl(path, limit):
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if limit >= 0 and len(out) >= limit:
                break
            if line.strip():
                out.append(json.loads(line))
    return out


def multiple_choice(context, choices, gold):
    return [(context, " " + c) for c in choices], list(choices), gold


def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def load_task(name, data_dir, limit, mmlu_limit=-1, mmlu_subjects=None):
    d = os.path.join(data_dir, "tasks", name)
    docs = []
    if name == "piqa":
        rows = jsonl(os.path.join(d, "valid.jsonl"), limit)
        with open(os.path.join(d, "valid-labels.lst")) as f:
            labels = [int(x) for x in f.read().split()]
        for row, label in zip(rows, labels):
            docs.append(multiple_choice(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], label))
    elif name == "hellaswag":
        original = os.path.join(d, "hellaswag_val.jsonl")
        if os.path.exists(original):
            for row in jsonl(original, limit):
                ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
                docs.append(multiple_choice(hellaswag_preprocess(row["activity_label"] + ": " + ctx),
                                            [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"])))
        else:
            with open(os.path.join(d, "hellaswag_val_full.txt"), encoding="utf-8") as f:
                lines = f.read().split("\n")
            for i in range(0, len(lines) - 5, 6):
                if 0 <= limit <= len(docs):
                    break
                docs.append(multiple_choice(hellaswag_preprocess(lines[i]),
                                            [hellaswag_preprocess(e) for e in lines[i + 2:i + 6]], int(lines[i + 1])))
    elif name == "winogrande":
        for row in jsonl(os.path.join(d, "dev.jsonl"), limit):
            idx = row["sentence"].index("_")
            target = row["sentence"][idx + 1:].strip()
            contexts = [row["sentence"][:idx] + opt for opt in (row["option1"], row["option2"])]
            docs.append(([(c, " " + target) for c in contexts], contexts, {"1": 0, "2": 1}[row["answer"]]))
    elif name in ("arc_easy", "arc_challenge"):
        file = "ARC-Easy-test.jsonl" if name == "arc_easy" else "ARC-Challenge-test.jsonl"
        for row in jsonl(os.path.join(d, file), limit):
            docs.append(multiple_choice(f"Question: {row['question']}\nAnswer:", row["choices"]["text"],
                                        row["choices"]["label"].index(row["answerKey"])))
    elif name == "openbookqa":
        for row in jsonl(os.path.join(d, "test.jsonl"), limit):
            q = row["question"]
            labels = [c["label"] for c in q["choices"]]
            docs.append(multiple_choice(q["stem"], [c["text"] for c in q["choices"]],
                                        labels.index(row["answerKey"].lstrip())))
    elif name == "boolq":
        for row in jsonl(os.path.join(d, "val_superglue_derived.jsonl"), limit):
            docs.append(multiple_choice(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"],
                                        int(row["label"])))
    elif name == "lambada_openai":
        for row in jsonl(os.path.join(d, "lambada_test.jsonl"), limit):
            words = row["text"].split(" ")
            docs.append(([(" ".join(words[:-1]), " " + words[-1])], [" " + words[-1]], 0))
    elif name == "mathqa":
        with open(os.path.join(d, "test.json"), encoding="utf-8") as f:
            rows = json.load(f)
        for row in rows[:limit] if limit >= 0 else rows:
            choices = [c[4:].rstrip(" ,") for c in re.findall(r"[abcd] \) .*?, |e \) .*?$", row["options"])]
            docs.append(multiple_choice(f"Question: {row['Problem']}\nAnswer:", choices,
                                        ["a", "b", "c", "d", "e"].index(row["correct"])))
    elif name == "mmlu":
        def read(path):
            with open(path, encoding="utf-8", newline="") as f:
                return [[cell.replace("\r\n", "\n") for cell in row] for row in csv.reader(f)]

        def text(row):
            return f"{row[0].strip()}\nA. {row[1]}\nB. {row[2]}\nC. {row[3]}\nD. {row[4]}\nAnswer:"

        for subject in mmlu_subjects or MMLU_SUBJECTS:
            dev = read(os.path.join(d, "dev", f"{subject}_dev.csv"))
            test = read(os.path.join(d, "test", f"{subject}_test.csv"))
            prefix = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
            prefix += "".join(text(r) + " " + r[5] + "\n\n" for r in dev[:5])
            for row in test[:mmlu_limit] if mmlu_limit >= 0 else test:
                reqs, choices, gold = multiple_choice(prefix + text(row), ["A", "B", "C", "D"], "ABCD".index(row[5]))
                docs.append((reqs, choices, gold, subject))
    else:
        raise SystemExit(f"unknown task {name}")
    return docs


# ----------------------------------------------------------------------------- model

def encode_pair(tokenizer, context, continuation, prefix_token_id, special=True):
    """The harness's HFLM request encoding (causal models); special=False: no BOS (harness < 0.4.9)."""
    if context == "":
        cont = tokenizer.encode(continuation, add_special_tokens=False)
        return ([prefix_token_id], cont) if prefix_token_id != cont[0] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer.encode(context + continuation, add_special_tokens=special)
    ctx = tokenizer.encode(context, add_special_tokens=special)
    return ctx, whole[len(ctx):]


def model_inputs(ctx, cont, max_length):
    return (ctx + cont)[-(max_length + 1):][:-1]


def max_length_of(model):
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if hasattr(model.config, attr) and getattr(model.config, attr):
            return getattr(model.config, attr)
    return 2048


def score_one(torch, model, ctx, cont, max_length, device):
    inp = model_inputs(ctx, cont, max_length)
    cont = cont[-len(inp):]  # a continuation longer than the window: its last max_length tokens
    with torch.no_grad():
        logits = torch.nn.functional.log_softmax(model(torch.tensor([inp], device=device)).logits.float(), dim=-1)[0]
    logits = logits[len(inp) - len(cont):]
    target = torch.tensor(cont, device=device)
    greedy = bool((logits.argmax(dim=-1) == target).all())
    return float(logits.gather(1, target.unsqueeze(1)).sum()), greedy


def argmax(values):
    best = 0
    for i, v in enumerate(values):
        if math.isnan(v):
            return i
        if v > values[best]:
            best = i
    return best


def item_metrics(name, doc, results):
    choices, gold = doc[1], doc[2]
    lls = [r[0] for r in results]
    if name == "lambada_openai":  # acc: the last word is the greedy continuation
        return {"acc": 1.0 if results[0][1] else 0.0}
    norm = [ll / len(c) if len(c) else (math.nan if ll == 0 else -math.inf) for ll, c in zip(lls, choices)]
    return {"acc": 1.0 if argmax(lls) == gold else 0.0, "acc_norm": 1.0 if argmax(norm) == gold else 0.0}


def load_model(args, torch, transformers):
    kw = {"dtype": torch.float32}
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, **kw)
    except TypeError:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    return model.to(args.device).eval()


def reference(args):
    import torch
    import transformers
    model = load_model(args, torch, transformers)
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    max_length = max_length_of(model)
    out = {"model": os.path.basename(os.path.normpath(args.model)),
           "definitions": "lm-evaluation-harness 0.4.9", "transformers": transformers.__version__,
           "torch": torch.__version__, "dtype": "float32", "max_length": max_length, "bos": not args.no_bos,
           "tasks": {}}
    for name in args.tasks.split(","):
        limit = args.mmlu_limit if name == "mmlu" else args.limit
        docs = load_task(name, args.data_dir, limit, args.mmlu_limit)
        items = []
        for doc in docs:
            results = [score_one(torch, model, *encode_pair(tokenizer, c, x, prefix, not args.no_bos), max_length,
                                 args.device)
                       for c, x in doc[0]]
            item = {"logprobs": [r[0] for r in results], "greedy": [r[1] for r in results]}
            item.update(item_metrics(name, doc, results))
            if name not in ACC_NORM:
                item.pop("acc_norm", None)
            items.append(item)
        entry = {"limit": limit, "acc": sum(i["acc"] for i in items) / len(items), "items": items}
        if name in ACC_NORM:
            entry["acc_norm"] = sum(i["acc_norm"] for i in items) / len(items)
        if name == "lambada_openai":
            entry["perplexity"] = math.exp(-sum(i["logprobs"][0] for i in items) / len(items))
        if name == "mmlu":
            entry["mmlu_subjects"] = MMLU_SUBJECTS
        out["tasks"][name] = entry
        print(f"{name}: {len(items)} items, acc {entry['acc']:.4f}", file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, out["model"] + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"wrote {path}", file=sys.stderr)


def timing(args):
    import torch
    import transformers
    with open(args.config) as f:
        shape = json.load(f)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    config = transformers.LlamaConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape.get("num_key_value_heads", shape["num_attention_heads"]),
        max_position_embeddings=shape["max_position_embeddings"], rms_norm_eps=shape["rms_norm_eps"])
    with torch.device(args.device):
        model = transformers.LlamaForCausalLM(config)
    model = model.to(dtype).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    max_length = max_length_of(model)
    for name in args.tasks.split(","):
        docs = load_task(name, args.data_dir, args.limit, args.mmlu_limit)
        reqs = [encode_pair(tokenizer, c, x, prefix, not args.no_bos) for doc in docs for c, x in doc[0]]
        rows = {}
        for ctx, cont in reqs:
            rows.setdefault(tuple(model_inputs(ctx, cont, max_length)), []).append(cont)
        order = sorted(rows, key=len, reverse=True)

        def run():
            with torch.no_grad():
                i = 0
                while i < len(order):
                    width = len(order[i])
                    batch = order[i:i + max(1, args.max_batch_tokens // width)]
                    ids = torch.zeros((len(batch), width), dtype=torch.long)
                    rows_at, positions, targets, spans = [], [], [], []
                    for r, row in enumerate(batch):
                        ids[r, :len(row)] = torch.tensor(row)
                        for cont in rows[row]:
                            cont = cont[-len(row):]
                            spans.append(len(cont))
                            for j, tok in enumerate(cont):
                                rows_at.append(r)
                                positions.append(len(row) - len(cont) + j)
                                targets.append(tok)
                    logp = torch.nn.functional.log_softmax(model(ids.to(args.device)).logits.float(), dim=-1)
                    sel = logp[torch.tensor(rows_at, device=args.device), torch.tensor(positions, device=args.device)]
                    target = torch.tensor(targets, device=args.device)
                    lp = sel.gather(1, target.unsqueeze(1)).squeeze(1).tolist()
                    greedy = (sel.argmax(-1) == target).tolist()
                    k = 0
                    for n in spans:  # per request: sum of log-probs, all greedy
                        _ = sum(lp[k:k + n]), all(greedy[k:k + n])
                        k += n
                    i += len(batch)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()

        with torch.no_grad():  # warm-up
            model(torch.tensor([list(order[-1])], device=args.device))
        runs = []
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            run()
            runs.append(time.perf_counter() - t0)
        seconds = runs[0]
        warm = min(runs[1:]) if len(runs) > 1 else seconds
        print(json.dumps({"benchmark": "tasks_reference", "task": name, "items": len(docs), "requests": len(reqs),
                          "rows": len(order), "max_batch_tokens": args.max_batch_tokens, "seconds": seconds,
                          "seconds_runs": runs, "items_per_s": len(docs) / seconds,
                          "items_per_s_warm": len(docs) / warm, "device": args.device, "dtype": args.dtype,
                          "torch": torch.__version__, "transformers": transformers.__version__}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder (reference mode)")
    p.add_argument("--data_dir", required=True, help="folder holding tasks/<task>/...")
    p.add_argument("--out", default="tests/data/tasks_reference", help="output folder (reference mode)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all; --time: hellaswag,mmlu)")
    p.add_argument("--limit", type=int, default=None, help="items per task (default 8; --time: 200)")
    p.add_argument("--mmlu_limit", type=int, default=None, help="items per MMLU subject (default 2; --time: 4)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no_bos", action="store_true", help="encode without special tokens (harness 0.4.0-0.4.8)")
    p.add_argument("--time", action="store_true", help="timing mode on random weights")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "..", "benchmarks", "configs", "llama-7b.json"))
    p.add_argument("--tokenizer", help="tokenizer folder (timing mode)")
    p.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (timing mode)")
    p.add_argument("--max_batch_tokens", type=int, default=16384, help="padded tokens per forward pass (timing mode)")
    p.add_argument("--repeat", type=int, default=1,
                   help="timing mode: runs of each task; the first is reported as items_per_s, the fastest later "
                        "one as items_per_s_warm")
    args = p.parse_args()
    if args.time:
        args.tasks = args.tasks or "hellaswag,mmlu"
        args.limit = 200 if args.limit is None else args.limit
        args.mmlu_limit = 4 if args.mmlu_limit is None else args.mmlu_limit
        if not args.tokenizer:
            p.error("--time needs --tokenizer")
        timing(args)
    else:
        args.tasks = args.tasks or ",".join(TASKS)
        args.limit = 8 if args.limit is None else args.limit
        args.mmlu_limit = 2 if args.mmlu_limit is None else args.mmlu_limit
        if not args.model:
            p.error("give --model (or --time)")
        reference(args)


if __name__ == "__main__":
    main()
