#!/usr/bin/env python3
"""Tables (Markdown) and a plot (SVG) of acur's results.jsonl records, one row
per method variant (method, search, sequential, calibration seed), one column
per target ratio. Standard library only.

    python3 benchmarks/summarize_results.py out/stories260k-results.jsonl \
        --title "stories260K-hf" --svg docs/methods_stories260k.svg --reference python
"""
import argparse
import json
import math
import sys
from collections import defaultdict

# Reference points on stories260K-hf: the original Python ASVD pipeline and Python
# prototypes of whitened SVD and the row skeleton, on an H200 (docs/results.md).
PYTHON_REFERENCE = {
    "ASVD (reference, run 1)": {0.95: 6.52, 0.9: 12.62, 0.85: 33.8, 0.8: 129.8, 0.7: 378.9},
    "whitened SVD (reference)": {0.95: 6.25, 0.9: 8.32, 0.85: 22.5, 0.8: 41.6, 0.7: 92.7},
    "row skeleton, diagonal (reference)": {0.95: 6.89, 0.9: 12.08, 0.85: 24.9, 0.8: 59.0, 0.7: 312.9},
    "row skeleton, Gram (reference)": {0.95: 6.27, 0.9: 9.81, 0.85: 18.9, 0.8: 35.4, 0.7: 101.9},
}


def variant(rec):
    a = rec.get("args", {})
    name = rec["method"]
    if a.get("search", "reference") != "reference":
        name += " +" + a["search"]
    if a.get("sequential"):
        name += " +sequential"
    if a.get("candidates"):
        name += " +fine candidates"
    if a.get("seed", 233) != 233:
        name += f" (seed {a['seed']})"
    return name


def load(paths):
    rows, dense = defaultdict(dict), None
    for path in paths:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                rec = json.loads(line)
                ppl = next(iter(rec["ppl"].values()))["ppl"]
                if rec.get("raw_model"):
                    dense = ppl
                    continue
                target = rec["args"]["param_ratio_target"]
                rows[variant(rec)][target] = (ppl, rec.get("param_ratio_linear"))
    return rows, dense


def table(rows, dense, ratios, reference):
    out = ["| method | " + " | ".join(f"{r:g}" for r in ratios) + " |", "|---" * (len(ratios) + 1) + "|"]
    if dense is not None:
        out.append("| dense | " + " | ".join(f"{dense:.2f}" for _ in ratios) + " |")
    for name, pts in (reference or {}).items():
        out.append(f"| {name} | " + " | ".join(f"{pts[r]:g}" if r in pts else "—" for r in ratios) + " |")
    for name in sorted(rows):
        cells = []
        for r in ratios:
            if r in rows[name]:
                ppl, real = rows[name][r]
                cells.append(f"{ppl:.2f} ({real:.3f})" if real else f"{ppl:.2f}")
            else:
                cells.append("—")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def svg(rows, dense, reference, title, path, ratios):
    w, h, left, right, top, bottom = 1000, 520, 70, 420, 40, 50
    series = [(n, {r: p for r, (p, _) in pts.items()}, False) for n, pts in sorted(rows.items())]
    series += [(n, pts, True) for n, pts in (reference or {}).items()]
    values = [p for _, pts, _ in series for p in pts.values() if p > 0 and math.isfinite(p)]
    if dense:
        values.append(dense)
    lo, hi = math.log10(min(values)), math.log10(max(values))
    x0, x1 = min(ratios), max(ratios)
    X = lambda r: left + (r - x0) / max(x1 - x0, 1e-9) * (w - left - right)
    Y = lambda p: top + (hi - math.log10(p)) / max(hi - lo, 1e-9) * (h - top - bottom)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
              "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
         f'<rect width="{w}" height="{h}" fill="white"/>',
         f'<text x="{left}" y="22" font-size="14">{title}: perplexity (log scale) vs target parameter ratio</text>',
         f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
         f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>']
    for r in ratios:
        s.append(f'<text x="{X(r):.1f}" y="{h - bottom + 16}" text-anchor="middle">{r:g}</text>')
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            p = m * 10 ** e
            if lo <= math.log10(p) <= hi:
                s.append(f'<line x1="{left}" y1="{Y(p):.1f}" x2="{w - right}" y2="{Y(p):.1f}" stroke="#ddd"/>')
                s.append(f'<text x="{left - 6}" y="{Y(p) + 4:.1f}" text-anchor="end">{p:g}</text>')
    if dense:
        s.append(f'<line x1="{left}" y1="{Y(dense):.1f}" x2="{w - right}" y2="{Y(dense):.1f}" stroke="black" stroke-dasharray="2,3"/>')
    for i, (name, pts, ref) in enumerate(series):
        c = colors[i % len(colors)]
        xs = sorted(r for r in pts if r in ratios)
        line = " ".join(f"{X(r):.1f},{Y(pts[r]):.1f}" for r in xs)
        dash = ' stroke-dasharray="6,4"' if ref else ""
        s.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.6"{dash} points="{line}"/>')
        for r in xs:
            s.append(f'<circle cx="{X(r):.1f}" cy="{Y(pts[r]):.1f}" r="2.5" fill="{c}"/>')
        ly = top + 14 * i
        s.append(f'<line x1="{w - right + 12}" y1="{ly}" x2="{w - right + 36}" y2="{ly}" stroke="{c}" stroke-width="2"{dash}/>')
        s.append(f'<text x="{w - right + 40}" y="{ly + 4}">{name}</text>')
    if dense:
        ly = top + 14 * len(series)
        s.append(f'<line x1="{w - right + 12}" y1="{ly}" x2="{w - right + 36}" y2="{ly}" stroke="black" stroke-dasharray="2,3"/>')
        s.append(f'<text x="{w - right + 40}" y="{ly + 4}">dense {dense:.2f}</text>')
    s.append(f'<text x="{(left + w - right) / 2}" y="{h - 12}" text-anchor="middle">target param ratio (Linear weights)</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+")
    ap.add_argument("--title", default="results")
    ap.add_argument("--svg")
    ap.add_argument("--reference", choices=["none", "python"], default="none")
    ap.add_argument("--only", help="comma-separated variants to plot (default: all)")
    args = ap.parse_args()
    rows, dense = load(args.results)
    ratios = sorted({r for pts in rows.values() for r in pts}, reverse=True)
    reference = PYTHON_REFERENCE if args.reference == "python" else None
    print(table(rows, dense, ratios, reference))
    if args.svg:
        plot_rows = rows if not args.only else {k: v for k, v in rows.items() if k in args.only.split(",")}
        svg(plot_rows, dense, reference, args.title, args.svg, sorted(ratios))


if __name__ == "__main__":
    sys.exit(main())
