#!/usr/bin/env python3
"""Tables of the switchable decoding kernels (util::Kernel), from the JSON lines that
benchmarks/gpu_generate.sh's part "kernels" writes:

    python3 benchmarks/kernels_summary.py OUT/bench_linear.jsonl OUT/bench_decode.jsonl

Prints Markdown:
- the packed int4 products of one token (bench_linear, CUDA graph replays), microseconds and
  GB/s of the packed bytes;
- the decoding runs (bench_decode): prefill and CUDA-graph decoding tokens/s, each against the
  dense run of the same prompt length and kernel switches, and against the dense run with all
  of them off.
Lines that are not JSON, or not of these benchmarks, are skipped.
"""
import argparse
import json

SWITCHES = ("dense_mma", "norm_in_product", "decode_vector", "packed_prefill")


def read(path):
    """The JSON objects of a JSON-lines file, other lines skipped; none for a missing file."""
    try:
        f = open(path)
    except OSError:
        return
    with f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def linear_table(path):
    cells, shapes = {}, []
    for j in read(path):
        if j.get("benchmark") != "linear" or j.get("kind") != "packed_rtn_int4" or j.get("tokens") != 1:
            continue
        shape = "%dx%d" % (j["in"], j["out"])
        if shape not in shapes:
            shapes.append(shape)
        us = j.get("graph_us", j["us"])
        cells[shape] = (us, j["weight_gb_per_s"] * j["us"] / us)  # the packed bytes over the graph time
    if not cells:
        return "no int4 bench_linear lines\n"
    out = ["| int4, 1 token | " + " | ".join(shapes) + " |", "|---|" + "---|" * len(shapes),
           "| graph replay | " + " | ".join("%.1f us (%.0f GB/s)" % cells[s] for s in shapes) + " |"]
    return "\n".join(out) + "\n"


def decode_table(path):
    runs = [j for j in read(path) if j.get("benchmark") == "decode"]
    if not runs:
        return "no bench_decode lines\n"

    def key(j):
        return (j.get("prompt_len"), j.get("batch"), tuple(bool(j.get(s)) for s in SWITCHES))

    dense = {key(j): j for j in runs if j.get("layers") == "dense"}
    def decode_rate(j):  # the CUDA graph's where there is one
        return j.get("graph_decode_tokens_per_s") or j["decode_tokens_per_s"]

    def against(j, base):
        if base is None or base is j:
            return ""
        return "%.2fx prefill, %.2fx decode" % (j["prefill_tokens_per_s"] / base["prefill_tokens_per_s"],
                                                decode_rate(j) / decode_rate(base))

    out = ["| layers | batch | prompt | switches on | prefill tok/s | decode tok/s (graph where timed) "
           "| vs dense, same switches | vs dense, all off |",
           "|---|---|---|---|---|---|---|---|"]
    for j in runs:
        on = ", ".join(s for s in SWITCHES if j.get(s)) or "none"
        all_off = (j.get("prompt_len"), j.get("batch"), tuple(False for _ in SWITCHES))
        out.append("| %s | %s | %s | %s | %.0f | %.1f | %s | %s |" % (
            j.get("layers"), j.get("batch"), j.get("prompt_len"), on, j["prefill_tokens_per_s"], decode_rate(j),
            against(j, dense.get(key(j))), against(j, dense.get(all_off))))
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("linear", help="bench_linear JSON lines")
    ap.add_argument("decode", help="bench_decode JSON lines")
    a = ap.parse_args()
    print(linear_table(a.linear))
    print(decode_table(a.decode))


if __name__ == "__main__":
    main()
