#!/usr/bin/env python3
"""Tables of benchmarks/gpu_generate.sh's parts "int4" and "shapes":

    python3 benchmarks/shapes_summary.py OUT/bench_linear.jsonl OUT/bench_decode.jsonl

Prints Markdown:
- int4: the int4 kernel's one-token products (bench_linear, CUDA graph replays, microseconds;
  the lines the part labels "int4_shape") and the whole LLaMA-7B step's CUDA-graph decoding
  tokens/s, int4 against dense bf16 of the same process (labelled too);
- shapes: each narrowed shape at its prompt length, its Linear weights against dense, prefill
  and CUDA-graph decoding tokens/s against the dense run with the same cuDNN setting.
Lines that are not JSON, or not of these parts, are skipped.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernels_summary import read  # noqa: E402


def int4_tables(linear_path, decode_path):
    rows, shapes = {}, []
    for j in read(linear_path):
        if ("int4_shape" not in j or j.get("benchmark") != "linear" or j.get("kind") != "packed_rtn_int4"
                or j.get("tokens") != 1):
            continue
        shape = "%dx%d" % (j["in"], j["out"])
        if shape not in shapes:
            shapes.append(shape)
        rows.setdefault(j["int4_shape"], {})[shape] = j.get("graph_us", j["us"])
    # The part's whole steps: dense and int4 side by side at a 512-token prompt.
    steps = {j.get("layers"): j.get("graph_decode_tokens_per_s") or j.get("decode_tokens_per_s")
             for j in read(decode_path) if "int4_shape" in j and j.get("benchmark") == "decode"}
    if not rows and not steps.get("packed:rtn_int4"):
        return "no int4 lines\n"
    def line(cells):
        return "| " + " | ".join(cells) + " |"

    out = [line(["int4 kernel"] + shapes), "|---|" + "---:|" * len(shapes)]
    for name, cells in rows.items():
        out.append(line([name] + ["%.1f" % cells[s] if s in cells else "" for s in shapes]))
    if steps.get("dense") and steps.get("packed:rtn_int4"):
        out.append("\nint4 step %.1f tok/s against dense bf16 %.1f: %.2fx" %
                   (steps["packed:rtn_int4"], steps["dense"], steps["packed:rtn_int4"] / steps["dense"]))
    return "\n".join(out) + "\n"


def shapes_table(decode_path):
    runs = [j for j in read(decode_path)
            if j.get("benchmark") == "decode" and "int4_shape" not in j and "cudnn_attention" in j
            and j.get("prompt_len", 0) >= 1024]
    if not runs:
        return "no shapes lines\n"

    def key(j):
        return (j["prompt_len"], j["batch"], bool(j["cudnn_attention"]))

    def decode_rate(j):
        return j.get("graph_decode_tokens_per_s") or j["decode_tokens_per_s"]

    dense = {key(j): j for j in runs if j["layers"] == "dense"}
    out = ["| SPEC | prompt | cuDNN | Linear weights vs dense | prefill tok/s | vs dense | decode tok/s | vs dense |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    for j in runs:
        d = dense.get(key(j))
        weights = "%.3f" % (j["linear_params"] / d["linear_params"]) if d else ""
        pre = "%.2fx" % (j["prefill_tokens_per_s"] / d["prefill_tokens_per_s"]) if d else ""
        dec = "%.2fx" % (decode_rate(j) / decode_rate(d)) if d else ""
        out.append("| %s | %d | %s | %s | %.0f | %s | %.1f | %s |" % (
            j["layers"], j["prompt_len"], "on" if j["cudnn_attention"] else "off", weights,
            j["prefill_tokens_per_s"], pre, decode_rate(j), dec))
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("linear", help="bench_linear JSON lines")
    p.add_argument("decode", help="bench_decode JSON lines")
    a = p.parse_args()
    print(int4_tables(a.linear, a.decode))
    print(shapes_table(a.decode))


if __name__ == "__main__":
    main()
