#!/usr/bin/env python3
"""acur as several processes on 127.0.0.1 (docs/distributed.md), against one process.

  distributed.py ACUR MODEL CALIB_TEXT EVAL_TEXT WORK CASE [acur flags ...]

CASE:
  same      1, 2 and 3 ranks give the same plan, sensitivity table and perplexity
            (within 1e-6 relative); only rank 0 writes.
  kill      rank 1 is killed as the sweep starts: every rank exits non-zero within
            the time limit, rank 0 names the failure, nothing is written.
  kill0     rank 0 (the store's host) is killed as the sweep starts: rank 1 exits non-zero
            naming rank 0 within the time limit.
  throw     rank 1 fails with an error as the sweep starts: every rank exits non-zero
            and rank 0 prints rank 1's error; nothing is written.
  mismatch  rank 1 has another --alpha: refused at start by every rank.
  placement one process with --device_map (two "cpu" entries; auto with a --max_memory cap
            that offloads a layer) gives the resident run's plan, table and perplexity.
Prints "SKIPPED: ..." (exit 0) when MODEL is absent. With --device cuda among the flags every
rank runs on the first GPU (CUDA_VISIBLE_DEVICES=0 unless set: a list of one device, which each
rank keeps as its own), a functional check of several ranks on a host with one GPU.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

LIMIT_S = 240  # no case may take longer (a hang fails the test)


def free_port():
    # A port the kernel just handed out; TCPStore binds it a moment later.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(acur, flags, world, out_dir, extra_env=None, rank_flags=None):
    """Starts `world` ranks; returns [(rc, stdout, stderr)] by rank and the seconds taken."""
    env_base = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUR4LLM_DIST_HEARTBEAT_S="10")
    if any(f.startswith("cuda") for f in flags):
        env_base.setdefault("CUDA_VISIBLE_DEVICES", "0")  # every rank on the one GPU
    env_base.update(extra_env or {})
    for attempt in range(3):
        port = free_port()
        procs = []
        t0 = time.monotonic()
        for rank in range(world):
            env = dict(env_base)
            if world > 1:
                env.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port))
            cmd = [acur] + flags + (rank_flags or {}).get(rank, []) + ["--output", out_dir]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = []
        for p in procs:
            try:
                out, err = p.communicate(timeout=max(1, LIMIT_S - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                sys.exit(f"FAIL: {world} ranks still running after {LIMIT_S} s: {' '.join(cmd)}")
            results.append((p.returncode, out, err))
        elapsed = time.monotonic() - t0
        # The port was taken between free_port() and the store's bind: try another.
        if any("Address already in use" in r[2] for r in results) and attempt < 2:
            continue
        return results, elapsed
    sys.exit("FAIL: no free port")


def fail(message, results=()):
    for rank, (rc, out, err) in enumerate(results):
        print(f"--- rank {rank}: rc {rc}\n{out[-2000:]}\n{err[-3000:]}")
    sys.exit("FAIL: " + message)


def ppl_lines(out):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\S+\.txt) ([0-9.]+)", out, re.M)}


def sensitivity_table(cache_dir):
    tables = [f for f in os.listdir(cache_dir) if f.startswith("sensitivity") and f.endswith(".json")]
    if len(tables) != 1:
        fail(f"{cache_dir}: expected one sensitivity table, found {tables}")
    with open(os.path.join(cache_dir, tables[0])) as f:
        layers = json.load(f)["layers"]
    return [{"layer": l["name"], "ratio": e["ratio"], "score": e["score"]} for l in layers for e in l["scores"]]


def main():
    acur, model, calib_text, eval_text, work, case = sys.argv[1:7]
    extra = sys.argv[7:]
    if not os.path.isfile(os.path.join(model, "config.json")):
        print(f"SKIPPED: no model at {model}")
        return
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    flags = ["--model_id", model, "--calib_dataset", calib_text, "--eval_ppl", eval_text, "--skip_dense_eval"] + extra

    if case in ("same", "placement"):
        reference = None
        # With --device cuda among the flags, the placement maps name cuda:0 instead of cpu.
        dev = "cuda:0" if any(f.startswith("cuda") for f in extra) else "cpu"
        runs = [(w, []) for w in (1, 2, 3)] if case == "same" else [
            (1, []), (1, ["--device_map", f"{dev}=0-0,{dev}=1-1"]),
            (1, ["--device_map", "auto", "--max_memory", f"{dev}=650KB"])]
        for index, (world, placement) in enumerate(runs):
            out_dir = os.path.join(work, f"run{index}")
            cache = os.path.join(work, f"cache{index}")
            results, _ = launch(acur, flags + placement + ["--use_cache", "--cache_dir", cache], world, out_dir)
            if any(rc != 0 for rc, _, _ in results):
                fail(f"{world} ranks: a rank exited non-zero", results)
            plans = [f for f in os.listdir(out_dir) if f.startswith("plan-")]
            if len(plans) != 1:
                fail(f"{world} ranks: expected one plan in {out_dir}, found {plans}", results)
            with open(os.path.join(out_dir, plans[0])) as f:
                plan = json.load(f)["layers"]
            with open(os.path.join(out_dir, "results.jsonl")) as f:
                records = [json.loads(line) for line in f if line.strip()]
            if len(records) != 1:
                fail(f"{world} ranks: {len(records)} records in results.jsonl (only rank 0 writes one)", results)
            # Perplexities at full precision from the record (the printed ones have four decimals).
            run = {"plan": plan, "table": sensitivity_table(cache),
                   "ppl": {spec: r["ppl"] for spec, r in records[0]["ppl"].items()}}
            if not run["ppl"]:
                fail(f"{world} ranks: rank 0 printed no perplexity", results)
            for rank in range(1, world):
                if ppl_lines(results[rank][1]):
                    fail(f"{world} ranks: rank {rank} printed results (only rank 0 does)", results)
            if reference is None:
                reference = run
                continue
            if run["plan"] != reference["plan"]:
                fail(f"{world} ranks: the plan differs from one process's")
            if len(run["table"]) != len(reference["table"]):
                fail(f"{world} ranks: {len(run['table'])} table entries, one process has {len(reference['table'])}")
            for a, b in zip(run["table"], reference["table"]):
                if a["layer"] != b["layer"] or a["ratio"] != b["ratio"]:
                    fail(f"{world} ranks: table entry {a} where one process has {b} (order or content)")
                sa, sb = a["score"], b["score"]
                if isinstance(sa, (int, float)) and isinstance(sb, (int, float)):
                    if abs(sa - sb) > 1e-6 * abs(sb):
                        fail(f"{world} ranks: score of {a['layer']} at {a['ratio']}: {sa} vs {sb}")
                elif sa != sb:
                    fail(f"{world} ranks: score of {a['layer']} at {a['ratio']}: {sa} vs {sb}")
            for spec, ppl in reference["ppl"].items():
                got = run["ppl"].get(spec)
                if got is None or abs(got - ppl) > 1e-6 * ppl:
                    fail(f"{world} ranks: perplexity {got} on {spec}, one process has {ppl}")
            print(f"{world} ranks {' '.join(placement)}: plan, table ({len(run['table'])} entries) and perplexity "
                  f"{run['ppl']} as one resident process")
        print("PASS")
        return

    out_dir = os.path.join(work, "out")
    if case == "kill0":
        results, elapsed = launch(acur, flags, 2, out_dir, extra_env={"CUR4LLM_DIST_FAULT": "kill:0:sweep"})
        if any(rc == 0 for rc, _, _ in results):
            fail("a rank exited with 0", results)
        if not re.search(r"rank 0", results[1][2]):
            fail("rank 1 does not name rank 0", results)
        print(f"kill0: every rank exited non-zero in {elapsed:.1f} s; rank 1 said: "
              + [l for l in results[1][2].splitlines() if "rank" in l][-1])
        print("PASS")
        return

    if case in ("kill", "throw"):
        results, elapsed = launch(acur, flags, 2, out_dir, extra_env={"CUR4LLM_DIST_FAULT": f"{case}:1:sweep"})
        if any(rc == 0 for rc, _, _ in results):
            fail("a rank exited with 0", results)
        err0 = results[0][2]
        expect = (r"rank 1 stopped responding" if case == "kill"
                  else r"rank 1: injected failure at sweep")
        if not re.search(expect, err0):
            fail(f"rank 0 does not name the failure (/{expect}/)", results)
        if case == "throw" and not re.search(r"injected failure at sweep", results[1][2]):
            fail("rank 1 does not print its own error", results)
        left = os.listdir(out_dir) if os.path.isdir(out_dir) else []
        if any(f.startswith("plan-") or f == "results.jsonl" for f in left):
            fail(f"files written after a failure: {left}", results)
        print(f"{case}: every rank exited non-zero in {elapsed:.1f} s; rank 0 said: "
              + [l for l in err0.splitlines() if "rank" in l][-1])
        print("PASS")
        return

    if case == "mismatch":
        results, _ = launch(acur, flags, 2, out_dir, rank_flags={1: ["--alpha", "0.25"]})
        if any(rc == 0 for rc, _, _ in results):
            fail("a rank exited with 0", results)
        for rank, (_, _, err) in enumerate(results):
            if not re.search(r"disagree on the command line: rank 1 has \"(0\.25|--alpha)\"", err):
                fail(f"rank {rank} does not refuse the mismatch", results)
        print("mismatch refused by both ranks")
        print("PASS")
        return
    sys.exit(f"unknown case {case}")


if __name__ == "__main__":
    main()
