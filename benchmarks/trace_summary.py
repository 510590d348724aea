#!/usr/bin/env python3
"""Where the time of a traced run goes, from a Chrome trace of PyTorch's profiler.

    bench_tasks ... --device cuda --repeat 2 --trace run   # writes run.<task>.json
    python3 benchmarks/trace_summary.py run.mmlu.json --label shared

Prints one JSON line: the traced span (wall), the GPU's busy time (kernels,
copies and fills, overlaps counted once) and its sum, the GPU time by kind of
kernel (benchmarks/kernel_times.py's kinds) and by phase, and the largest
kernels and CPU operators. A phase is the innermost user scope
(RECORD_USER_SCOPE, e.g. "tasks.prefixes") open on the launching thread when a
kernel was launched; kernels launched outside every scope count as "(none)".
The CPU time of a phase is the summed length of its scopes. With --phase, only
the GPU work launched in that phase is counted (bench_decode's "decode.step":
what the decoding steps run).
"""
import argparse
import bisect
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_times import kind_of  # noqa: E402

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}


def busy(intervals):
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start >= end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--label", default="")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--phase", default="", help="count only the GPU work launched in this phase (e.g. decode.step)")
    a = p.parse_args()
    with open(a.trace) as f:
        data = json.load(f)
    events = [e for e in data.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    if not events:
        sys.exit(f"trace_summary.py: no complete events in {a.trace}")

    scopes = {}  # tid -> sorted [(start, end, name)]
    for e in events:
        if e.get("cat") == "user_annotation":
            scopes.setdefault(e.get("tid"), []).append((e["ts"], e["ts"] + e["dur"], e["name"]))
    starts = {}
    for tid, spans in scopes.items():
        spans.sort()
        starts[tid] = [s[0] for s in spans]

    def phase_at(tid, ts):
        spans = scopes.get(tid)
        if not spans:
            return "(none)"
        i = bisect.bisect_right(starts[tid], ts) - 1
        # Scopes nest a few deep: the latest-starting one that still holds ts is the innermost.
        for j in range(i, max(-1, i - 8), -1):
            if spans[j][0] <= ts < spans[j][1]:
                return spans[j][2]
        return "(none)"

    launch_phase = {}
    for e in events:
        if e.get("cat") in LAUNCH_CATS and "correlation" in e.get("args", {}):
            launch_phase[e["args"]["correlation"]] = phase_at(e.get("tid"), e["ts"])

    gpu = [e for e in events if e.get("cat") in GPU_CATS]
    phase_of = lambda e: launch_phase.get(e.get("args", {}).get("correlation"), "(none)")
    if a.phase:
        gpu = [e for e in gpu if phase_of(e) == a.phase]
        if not gpu:
            sys.exit(f"trace_summary.py: no GPU work launched in phase {a.phase!r} in {a.trace}")
    by_kind, by_phase, by_kernel = {}, {}, {}
    for e in gpu:
        us = float(e["dur"])
        name = e["name"]
        kind = kind_of(name) if e["cat"] == "kernel" else e["cat"]
        phase = phase_of(e)
        for table, key in ((by_kind, kind), (by_phase, phase), (by_kernel, name)):
            calls, total = table.get(key, (0, 0.0))
            table[key] = (calls + 1, total + us)
    scope_time = {}
    for spans in scopes.values():
        for start, stop, name in spans:
            scope_time[name] = scope_time.get(name, 0.0) + (stop - start)
    ops = {}
    for e in events:
        if e.get("cat") == "cpu_op":
            calls, total = ops.get(e["name"], (0, 0.0))
            ops[e["name"]] = (calls + 1, total + float(e["dur"]))

    ms = lambda us: round(us / 1000.0, 3)
    first = min(e["ts"] for e in events)
    last = max(e["ts"] + e["dur"] for e in events)
    rows = lambda table, n=None: [
        {"name": k[:140], "calls": c, "ms": ms(t)} for k, (c, t) in sorted(table.items(), key=lambda kv: -kv[1][1])[:n]
    ]
    out = {
        "label": a.label,
        "phase": a.phase or "(all)",
        "trace": os.path.basename(a.trace),
        "wall_ms": ms(last - first),
        "gpu_busy_ms": ms(busy([(e["ts"], e["ts"] + e["dur"]) for e in gpu])),
        "gpu_sum_ms": ms(sum(float(e["dur"]) for e in gpu)),
        "gpu_events": len(gpu),
        "by_kind": rows(by_kind),
        "by_phase": [dict(r, cpu_ms=ms(scope_time.get(r["name"], 0.0))) for r in rows(by_phase)],
        "top_kernels": rows(by_kernel, a.top),
        "top_cpu_ops": rows(ops, a.top),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
