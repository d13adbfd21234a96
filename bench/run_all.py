"""`make bench`: every hop and the whole pipeline beside its naive counterpart, in one run (< 15 min on 2 cores).

    .venv/bin/python -m bench.run_all [--runs 3] [--quick] [--only hops,onnx,kafka,vectors,e2e,profile,train,bgl]

Writes bench/results/all.json and docs/benchmarks.md (the part above `<!-- bench:end -->`; what is
below that marker is kept). The code lives in bench/pipeline.py (`python -m bench`).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: bench/ is not installed
from bench.pipeline import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["all", *sys.argv[1:]]))
