#!/usr/bin/env python3
"""Test of scripts/convert_llama2c.py: converts stories260K.bin + tok512.model
from the shared data and compares the result with the stories260K-hf folder
there (made independently, with PyTorch, and checked in transformers): the
config keys and values, every tensor's dtype, shape and bytes, the tokenizer
file. Also checks that a bad checkpoint fails with one line and writes nothing.

    check_convert_llama2c.py SCRIPT SHARED_DIR WORK_DIR

Prints "SKIPPED: ..." and exits 0 when the shared data is absent.
"""

import json
import os
import shutil
import struct
import subprocess
import sys


def read_safetensors(path):
    """Returns {name: (dtype, shape, bytes)} of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    base = 8 + n
    return {name: (e["dtype"], e["shape"], data[base + e["data_offsets"][0]: base + e["data_offsets"][1]])
            for name, e in header.items()}


def main():
    script, shared, work = sys.argv[1:4]
    src = os.path.join(shared, "data", "models", "stories260K")
    ref = os.path.join(shared, "data", "models", "stories260K-hf")
    ckpt = os.path.join(src, "stories260K.bin")
    tok = os.path.join(src, "tok512.model")
    for p in (ckpt, tok, os.path.join(ref, "model.safetensors")):
        if not os.path.exists(p):
            print(f"SKIPPED: {p} is absent (shared data)")
            return 0
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    out = os.path.join(work, "stories260K-hf")
    run = subprocess.run([sys.executable, script, ckpt, tok, out], capture_output=True, text=True)
    failures = []
    if run.returncode != 0:
        print(run.stdout, run.stderr)
        print("FAIL: the conversion exited with", run.returncode)
        return 1

    with open(os.path.join(out, "config.json")) as f:
        got = json.load(f)
    with open(os.path.join(ref, "config.json")) as f:
        want = json.load(f)
    if sorted(got) != sorted(want):
        failures.append(f"config keys differ: {sorted(set(got) ^ set(want))}")
    for key in want:
        if key in got and got[key] != want[key]:
            failures.append(f"config {key}: {got[key]!r}, expected {want[key]!r}")

    got_t = read_safetensors(os.path.join(out, "model.safetensors"))
    want_t = read_safetensors(os.path.join(ref, "model.safetensors"))
    if sorted(got_t) != sorted(want_t):
        failures.append(f"tensor names differ: {sorted(set(got_t) ^ set(want_t))}")
    for name, (dtype, shape, blob) in want_t.items():
        if name not in got_t:
            continue
        g = got_t[name]
        if g[0] != dtype or g[1] != shape:
            failures.append(f"{name}: {g[0]} {g[1]}, expected {dtype} {shape}")
        elif g[2] != blob:
            failures.append(f"{name}: bytes differ")

    for name in ("tokenizer.model",):
        with open(os.path.join(out, name), "rb") as a, open(os.path.join(ref, name), "rb") as b:
            if a.read() != b.read():
                failures.append(f"{name} differs")
    with open(os.path.join(out, "tokenizer_config.json")) as f:
        tc = json.load(f)
    if tc.get("add_bos_token") is not True or tc.get("tokenizer_class") != "LlamaTokenizer":
        failures.append(f"tokenizer_config.json: {tc}")

    # A file that is not a llama2.c checkpoint: one line on stderr, exit 1, no folder.
    bad_out = os.path.join(work, "bad")
    bad = subprocess.run([sys.executable, script, tok, tok, bad_out], capture_output=True, text=True)
    if bad.returncode != 1 or "not a plausible size" not in bad.stderr or bad.stderr.count("\n") != 1:
        failures.append(f"bad checkpoint: rc {bad.returncode}, stderr {bad.stderr!r}")
    if os.path.exists(bad_out) or any(e.startswith(".convert_llama2c-") for e in os.listdir(work)):
        failures.append("bad checkpoint left files behind")
    # An existing, non-empty output folder is refused and left as it was.
    before = read_safetensors(os.path.join(out, "model.safetensors"))
    again = subprocess.run([sys.executable, script, ckpt, tok, out], capture_output=True, text=True)
    if again.returncode != 1 or "not an empty folder" not in again.stderr:
        failures.append(f"existing output: rc {again.returncode}, stderr {again.stderr!r}")
    if read_safetensors(os.path.join(out, "model.safetensors")) != before:
        failures.append("existing output was changed")

    for f in failures:
        print("FAIL:", f)
    if not failures:
        print(f"OK: {len(want_t)} tensors and config.json equal the reference folder")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
