#!/usr/bin/env python3
"""Where a decoding step's GPU time goes, from Nsight Compute's CSV.

    ncu --clock-control none --cache-control none --nvtx --nvtx-include "decode_step/" \
        --metrics gpu__time_duration.sum --print-units base --csv \
        bench_decode ... --new_tokens 2 > step.csv
    python3 benchmarks/kernel_times.py step.csv --steps 3 --label dense

bench_decode marks each decoding step as an NVTX range "decode_step"; with
--new_tokens 2 a run has 3 of them (2 warm-up steps, 1 timed). Prints one JSON
line: the kernels' summed GPU time per step, by kind and by kernel (name, calls
and microseconds per step), largest first. ncu runs the kernels one at a time,
so the sum is the GPU's busy time without overlap or launch gaps.
"""
import argparse
import csv
import json
import re
import sys

# Coarse kinds by kernel name, first match wins.
KINDS = [
    ("packed matmul", r"packed_linear|int4_mma"),
    ("low-rank (fused)", r"lowrank"),
    ("matmul", r"gemv|gemm|xmma|cutlass|sm90_|splitK|Kernel2|matmul|dense_mma"),
    ("attention", r"softmax|fmha|flash|attention|sdpa|cudnn"),
    ("norm", r"norm"),
    ("rotary", r"rotary"),
    ("copy / cast / index", r"copy|index|cat|gather|scatter|fill|arange"),
    ("element-wise", r"elementwise|vectorized|unrolled|silu|reduce"),
]


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--steps", type=int, required=True, help="decoding steps the profile holds")
    p.add_argument("--label", default="")
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    with open(a.csv, newline="") as f:
        rows = [line for line in f if line.startswith('"')]  # ncu's own log lines start with ==PROF==
    reader = csv.DictReader(rows)
    by_kernel = {}
    for row in reader:
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row.get("Metric Unit", "")
        scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(unit)
        if scale is None:
            sys.exit(f"kernel_times.py: unknown unit {unit!r} in {a.csv}")
        us = float(row["Metric Value"].replace(",", "")) * scale
        name = row["Kernel Name"]
        calls, total = by_kernel.get(name, (0, 0.0))
        by_kernel[name] = (calls + 1, total + us)
    if not by_kernel:
        sys.exit(f"kernel_times.py: no gpu__time_duration.sum rows in {a.csv}")
    kinds = {}
    for name, (calls, total) in by_kernel.items():
        k = kind_of(name)
        kc, kt = kinds.get(k, (0, 0.0))
        kinds[k] = (kc + calls, kt + total)
    per_step = lambda v: round(v / a.steps, 2)
    out = {
        "label": a.label,
        "steps": a.steps,
        "gpu_us_per_step": per_step(sum(t for _, t in by_kernel.values())),
        "kernels_per_step": per_step(sum(c for c, _ in by_kernel.values())),
        "by_kind": [
            {"kind": k, "calls_per_step": per_step(c), "us_per_step": per_step(t)}
            for k, (c, t) in sorted(kinds.items(), key=lambda kv: -kv[1][1])
        ],
        "top_kernels": [
            {"kernel": n[:120], "calls_per_step": per_step(c), "us_per_step": per_step(t)}
            for n, (c, t) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[: a.top]
        ],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
