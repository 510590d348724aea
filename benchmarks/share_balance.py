#!/usr/bin/env python3
"""How evenly a distributed sensitivity sweep splits: each rank's share timed alone.

    python3 benchmarks/share_balance.py --bench build/benchmarks/bench_pipeline --ranks 2,4,8 -- \
        --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --samples 16 --seqlen 2048

For every N in --ranks and every rank R < N, runs `bench_pipeline --stages
sensitivity --profile 0 --share R/N` with the arguments after "--" and reads
its sweep time. Prints one JSON line per N: each share's seconds, the measured
max/mean (1.0 is a perfect split), the split's predicted max/mean (from the
cost model of dist/work.h), the one-rank sweep (N = 1) and, labelled as a
projection, the sweep's wall time on N devices (the slowest share) and the
speedup over one. Shares run one after another on the same device.

Each process first sweeps one entry on one sample untimed (bench_pipeline
--warmup 1), so that the share times hold the sweep's work without what a
process pays once (libraries' handles, kernels loaded, allocator pools); those
seconds are printed too ("warmup_s"). --warmup 0 times the sweeps cold.
"""
import argparse
import json
import subprocess
import sys


def sweep_seconds(bench, share, extra, warmup):
    cmd = [bench, "--stages", "sensitivity", "--profile", "0", "--warmup", str(warmup), *extra]
    if share:
        cmd += ["--share", share]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("stage") == "sensitivity":
            return record["wall_s"], record
    sys.exit(f"share_balance.py: no sensitivity record from {' '.join(cmd)}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", required=True, help="the bench_pipeline executable")
    p.add_argument("--ranks", default="2,4,8")
    p.add_argument("--warmup", type=int, default=1, choices=(0, 1), help="1: one untimed entry before each sweep")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then bench_pipeline's model and stage arguments")
    a = p.parse_args()
    extra = a.extra[1:] if a.extra[:1] == ["--"] else a.extra
    one, record = sweep_seconds(a.bench, "", extra, a.warmup)
    print(json.dumps({"ranks": 1, "sweep_s": round(one, 3), "warmup_s": record.get("warmup_s"),
                      "device_name": record.get("device_name"), "source": record.get("source")}), flush=True)
    for n in (int(r) for r in a.ranks.split(",")):
        times, warmups, predicted = [], [], None
        for r in range(n):
            s, rec = sweep_seconds(a.bench, f"{r}/{n}", extra, a.warmup)
            times.append(round(s, 3))
            if "warmup_s" in rec:
                warmups.append(round(rec["warmup_s"], 3))
            predicted = rec.get("share_cost_max_over_mean")
        mean = sum(times) / n
        print(json.dumps({"ranks": n, "share_s": times, "warmup_s": warmups,
                          "measured_max_over_mean": round(max(times) / mean, 4),
                          "predicted_max_over_mean": round(predicted, 4),
                          "projected_wall_s": max(times), "projected_speedup": round(one / max(times), 2)}),
              flush=True)


if __name__ == "__main__":
    main()
