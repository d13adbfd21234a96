"""Pictures of `make bench`'s figures, beside docs/benchmarks.md: every hop's throughput (min/median/max over the
runs, naive counterparts included) and the end-to-end latency and throughput per replay rate, from
bench/results/all.json. matplotlib (the `plots` extra) with the Agg backend.

    python -m bench.plots [--results bench/results/all.json] [--out docs]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ("benchmarks_hops.png", "benchmarks_e2e.png")


def write(res: dict, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    caption = f"make bench, {res.get('date', '?')}; {res.get('machine', {}).get('cpus', '?')} cores, shared box"
    hops = res.get("hops", {}).get("lines_per_s", {})
    if hops:
        names = list(hops)
        med = np.asarray([hops[n]["median"] for n in names])
        lo = med - np.asarray([hops[n]["min"] for n in names])
        hi = np.asarray([hops[n]["max"] for n in names]) - med
        fig, ax = plt.subplots(figsize=(8, 0.42 * len(names) + 1.4))
        colors = ["tab:gray" if n.startswith("naive") else "tab:blue" for n in names]
        ax.barh(range(len(names)), med, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("items per second (log; min-median-max; grey: naive counterpart)")
        ax.set_title(f"gRPC hops\n{caption}", fontsize=9)
        fig.tight_layout()
        written.append(out_dir / FILES[0])
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    runs = [r for r in res.get("e2e", {}).get("runs", []) if r.get("rate") and r.get("p99_s") is not None]
    if runs:
        rates = sorted({r["rate"] for r in runs})
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
        for key, marker, color in (("p50_s", "o", "tab:blue"), ("p99_s", "s", "tab:red")):
            xs = [r["rate"] for r in runs]
            a.plot(xs, [r[key] for r in runs], marker, color=color, alpha=0.7, label=key.replace("_s", ""))
            a.plot(rates, [np.median([r[key] for r in runs if r["rate"] == x]) for x in rates], "-", color=color,
                   alpha=0.5)
        a.set_xlabel("replay rate (lines/s)")
        a.set_ylabel("producer to verdict (s)")
        a.set_title("end-to-end latency (each run a dot, median line)", fontsize=9)
        a.legend(fontsize=8)
        b.plot([r["rate"] for r in runs], [r["sustained_lines_per_s"] for r in runs], "o", label="sustained")
        b.plot(rates, rates, "--", color="gray", label="asked")
        b.set_xlabel("replay rate (lines/s)")
        b.set_ylabel("lines scored per second")
        b.set_title("throughput at each rate", fontsize=9)
        b.legend(fontsize=8)
        fig.suptitle(caption, fontsize=9)
        fig.tight_layout()
        written.append(out_dir / FILES[1])
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)
    return written


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(REPO / "bench/results/all.json"))
    p.add_argument("--out", default=str(REPO / "docs"))
    args = p.parse_args()
    for path in write(json.loads(Path(args.results).read_text()), Path(args.out)):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
