"""BGL inner validation (issue 16): the whole method judged on the *training* part alone, at rolling origins.

Why: `make experiment` judges the lines after one cut time (the held-out part). Designing rules after reading that
part's errors makes its figures optimistic (docs/evaluation.md, BGL: the kin rule was). This run never reads a
line after the cut: it keeps the lines at or before it (the training part, as `logmesh train --format bgl` cuts
it), and for each origin q (a quantile of the training lines' times) fits every model of the method exactly as
training does (`scorer.bgl.fit_models`: the line ensemble, the new-template rule with its kin, and the judge
whose C and tau are chosen on a slice inside the lines before the origin) on the lines before the origin, then
judges the training lines from that origin to the next one (the last origin: to the cut). The slices do not
overlap, so their counts add up ("pooled"). Per slice it lists the error families: false alarms grouped by the
path that raised them (members, kin, judge) and their template, misses by category and the path that lost them.

`--loco` adds leave-one-category-out at the `--loco-origin` origin (the refit detectors' recall on each category
with >= 10 lines before that origin, and their false-alarm rate on the slice after it).

`--variant NAME` judges a method variant beside it (see VARIANTS), fitted and judged on the same slices.

Run: .venv/bin/python bench/bgl_inner.py [--data ../shared/data/bgl] [--origins 0.6,0.7,0.8,0.9] [--loco]
     [--json var/bgl_inner/result.json]
The MiniLM vectors of the training shapes are cached in var/bgl_inner/vectors.npz (--vectors) between runs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from logmesh.ingest.bgl_templates import TEMPLATES_FILE, BglTemplates  # noqa: E402
from logmesh.ingest.templates_drain import DrainTemplates  # noqa: E402
from logmesh.scorer import bgl  # noqa: E402

ORIGINS = (0.6, 0.7, 0.8, 0.9)
#: method variants judged beside the method as it is: name -> a context manager that changes the method inside it
VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {}


def variant(name: str):
    def register(fn):
        VARIANTS[name] = contextlib.contextmanager(fn)
        return fn
    return register


@contextlib.contextmanager
def _patched(obj, attr: str, value) -> Iterator[None]:
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


@variant("no-kin")
def _no_kin() -> Iterator[None]:
    """The judge decides every never-seen template (kin learnt but never consulted), C and tau chosen so too."""
    with _patched(bgl.NovelTemplates, "kin_labels", lambda self, shapes: np.full(len(shapes), -1, int)):
        yield


@variant("no-judge")
def _no_judge() -> Iterator[None]:
    """Kin decide where they agree; every other never-seen template at an alerting level is flagged."""
    with _patched(bgl, "select_judge", lambda *a, **k: None):
        yield


@variant("members-only")
def _members_only() -> Iterator[None]:
    """The line ensemble alone: no never-seen template is flagged."""
    with _patched(bgl.NovelTemplates, "flags", lambda self, events, levels, shapes=None: np.zeros(len(events), bool)):
        yield


@variant("balanced-weights")
def _balanced_weights() -> Iterator[None]:
    """Tried: the members' rows weighted by log(1 + lines) instead of lines, then each class given the same total
    weight, so a shape seen on 10 alert lines is not outweighed by normal shapes seen on thousands."""
    def fit_lines(shapes, truth, vectors, seed):
        from logmesh.scorer.ensemble import LineEnsemble
        rows = Counter(zip(shapes, truth.tolist()))
        keys = list(rows)
        x = [k[0] for k in keys]
        y = np.asarray([k[1] for k in keys])
        w = np.log1p(np.asarray([rows[k] for k in keys], np.float64))
        for c in (0, 1):
            if (y == c).any():
                w[y == c] *= w.sum() / 2 / w[y == c].sum()
        return LineEnsemble(seed).fit(x, np.stack([vectors[s] for s in x]), y, w)
    with _patched(bgl, "fit_lines", fit_lines):
        yield


@variant("no-memory")
def _no_memory() -> Iterator[None]:
    """Before 2026-12-02 18:00: no known alert template is remembered; the members alone judge known templates."""
    with _patched(bgl.NovelTemplates, "known_alerts", lambda self, events, levels: np.zeros(len(events), bool)):
        yield


def _loto_select_judge(samples, cut, window, vectors, seed):
    """Tried 2026-12-02: the judge's C and tau chosen by leaving each training template out in turn
    (bgl_novelty.select_by_templates) instead of on a chronological slice inside training."""
    from logmesh.scorer.bgl_novelty import select_by_templates, template_rows
    part = bgl.make_part(samples, lambda t: t <= cut, DrainTemplates(), window)
    novel = bgl.NovelTemplates.fit(part.events, part.levels, part.truth)
    return select_by_templates(*template_rows(part.shapes, part.events, part.levels, part.truth, novel.alerting_levels))


@variant("loto-judge")
def _loto_judge() -> Iterator[None]:
    """Tried: the judge's C and tau chosen on left-out training templates (every one is a never-seen template
    once) instead of line F1 on a chronological slice inside training (a handful of new templates there)."""
    with _patched(bgl, "select_judge", _loto_select_judge):
        yield


def training_part(samples: list[bgl.Sample], share: float = bgl.TRAIN_SHARE) -> tuple[list[bgl.Sample], float]:
    """The samples cut to their lines at or before the training cut (as train_bgl cuts them): nothing after it
    is kept, so nothing after it can be read."""
    cut = bgl.split_time(samples, share)
    out = []
    for s in samples:
        keep = np.flatnonzero(s.times <= cut)
        out.append(bgl.Sample(s.name, [s.records[i] for i in keep], [s.labels[i] for i in keep],
                              sum(not s.records[i].parsed for i in keep)))
    return out, cut


def vectors_for(shapes: set[str], cache: Path | None, embed: bgl.Embed | None = None) -> dict[str, np.ndarray]:
    known: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        known = dict(zip(z["shapes"].tolist(), z["vectors"]))
    missing = sorted(shapes - set(known))
    if missing:
        embed = embed or bgl._default_embed()
        known.update(zip(missing, np.asarray(embed(missing), np.float32)))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(known)
            np.savez(cache, shapes=np.asarray(keys), vectors=np.stack([known[k] for k in keys]))
    return known


@dataclasses.dataclass
class Slice:
    origin: float          # quantile of the training lines' times
    start: float           # epoch seconds: lines after it are judged ...
    end: float             # ... up to and including this one
    fit: bgl.Part
    judged: bgl.Part


def slices(train: list[bgl.Sample], cut: float, origins: tuple[float, ...], window: int) -> list[Slice]:
    times = np.concatenate([s.times for s in train])
    bounds = [float(np.quantile(times, q)) for q in origins] + [cut]
    out = []
    for q, start, end in zip(origins, bounds, bounds[1:]):
        drain = DrainTemplates()
        fit = bgl.make_part(train, lambda t: t <= start, drain, window)
        drain.freeze()
        judged = bgl.make_part(train, lambda t: (t > start) & (t <= end), drain, window)
        judged.drain = drain  # type: ignore[attr-defined]
        out.append(Slice(q, start, end, fit, judged))
    return out


def paths(models: dict, part: bgl.Part, vectors: dict[str, np.ndarray]) -> list[str]:
    """Per line, what decided its verdict: members | known-alert (a known template whose training lines were mostly
    alerts) | kin-alert | kin-normal | judge-pass | judge-veto | new-flag (a new template flagged without judge) |
    seen (a known template the members call normal) | not-alerting (a new template at a level that is not
    alerting) -- the error families' first key."""
    voted = bgl.predict_lines(models["line"], part.shapes, vectors)
    novel = models["novel"]
    known = novel.known_alerts(part.events, part.levels)
    new = novel.new(part.events, part.levels)
    flags = novel.flags(part.events, part.levels, part.shapes)
    kin = np.full(len(new), -1, int)
    if new.any():
        kin[new] = novel.kin_labels([part.shapes[i] for i in np.flatnonzero(new)])
    has_judge = getattr(novel, "judge", None) is not None
    out = []
    for i in range(len(part.shapes)):
        if voted[i]:
            out.append("members")
        elif known[i]:
            out.append("known-alert")
        elif not new[i]:
            out.append("seen" if part.events[i] in novel.seen else "not-alerting")
        elif kin[i] == 1:
            out.append("kin-alert")
        elif kin[i] == 0:
            out.append("kin-normal")
        elif has_judge:
            out.append("judge-pass" if flags[i] else "judge-veto")
        else:
            out.append("new-flag" if flags[i] else "new-veto")
    return out


def error_families(models: dict, part: bgl.Part, vectors: dict[str, np.ndarray], predicted: np.ndarray) -> dict:
    why = paths(models, part, vectors)
    fp, fn, tp = Counter(), Counter(), Counter()
    for i, (y, p) in enumerate(zip(part.truth.tolist(), predicted.tolist())):
        if p and not y:
            fp[(why[i], part.events[i], part.shapes[i])] += 1
        elif y and not p:
            fn[(why[i], part.categories[i], part.events[i], part.shapes[i])] += 1
        elif y and why[i].startswith(("judge", "new")):
            tp[(why[i], part.categories[i], part.events[i], part.shapes[i])] += 1
    judge = getattr(models["novel"], "judge", None)

    def p_alert(shape: str) -> float | None:  # the judge's P(alert), for the lines it decided
        return round(float(judge.probability([shape])[0]), 3) if judge is not None else None
    return {"false_alarms": [{"path": k[0], "event": k[1], "shape": k[2], "lines": n,
                              **({"p": p_alert(k[2])} if k[0].startswith("judge") else {})} for k, n in fp.most_common()],
            "misses": [{"path": k[0], "category": k[1], "event": k[2], "shape": k[3], "lines": n,
                        **({"p": p_alert(k[3])} if k[0].startswith("judge") else {})} for k, n in fn.most_common()],
            "new_template_catches": [{"path": k[0], "category": k[1], "event": k[2], "shape": k[3], "lines": n,
                                      **({"p": p_alert(k[3])} if k[0].startswith("judge") else {})}
                                     for k, n in tp.most_common()]}


def judge_slice(s: Slice, train: list[bgl.Sample], vectors: dict[str, np.ndarray], window: int, seed: int) -> dict:
    drain = s.judged.drain  # type: ignore[attr-defined]
    models, selection = bgl.fit_models(train, s.start, s.fit, drain, window, vectors, seed)
    r = bgl.judge(models, s.judged, vectors, window, verdicts=True)
    predicted = np.asarray(r.pop("verdicts"), bool)
    return {"origin": s.origin, "fit_lines": len(s.fit.shapes), "fit_alerts": int(s.fit.truth.sum()),
            "from_utc": dt.datetime.fromtimestamp(s.start, dt.timezone.utc).isoformat()[:19],
            "to_utc": dt.datetime.fromtimestamp(s.end, dt.timezone.utc).isoformat()[:19],
            "judge": selection.as_dict() if selection else None,
            "line": r["line"], "window": r["window"], "line_recall_by_category": r["line_recall_by_category"],
            **error_families(models, s.judged, vectors, predicted), "_models": models}


def pooled(per: list[dict]) -> dict:
    tp, fp, fn, tn = (sum(x["line"][k] for x in per) for k in ("tp", "fp", "fn", "tn"))
    wtp, wfp, wfn, wtn = (sum(x["window"][k] for x in per) for k in ("tp", "fp", "fn", "tn"))

    def f(tp, fp, fn, tn):
        return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": tp / (tp + fp) if tp + fp else 0.0,
                "recall": tp / (tp + fn) if tp + fn else 0.0, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
                "fpr": fp / (fp + tn) if fp + tn else 0.0}
    return {"line": f(tp, fp, fn, tn), "window": f(wtp, wfp, wfn, wtn)}


def run_method(train: list[bgl.Sample], cut: float, cuts: list[Slice], vectors, window: int, seed: int,
               loco_origin: float | None) -> dict:
    per = [judge_slice(s, train, vectors, window, seed) for s in cuts]
    out = {"slices": per, "pooled": pooled(per)}
    if loco_origin is not None:
        s = next(x for x in cuts if abs(x.origin - loco_origin) < 1e-9)
        sel = next(x for x in per if x["origin"] == s.origin)["judge"]
        out["loco"] = {"origin": s.origin, **bgl.leave_one_category_out(
            s.fit, vectors, seed, judged=s.judged, judge=(sel["c"], sel["tau"]) if sel else None)}
    for x in per:
        x.pop("_models")
    return out


def inner_validation(data: Path, origins: tuple[float, ...] = ORIGINS, window: int = bgl.WINDOW, seed: int = 0,
                     variants: tuple[str, ...] = (), loco_origin: float | None = None,
                     vectors_cache: Path | None = None, embed: bgl.Embed | None = None) -> dict:
    started = time.perf_counter()
    files = bgl.bgl_files(data)
    tfile = (data if data.is_dir() else data.parent) / TEMPLATES_FILE
    templates = BglTemplates.read(tfile) if tfile.exists() else None
    train, cut = training_part(bgl.read_samples(files, templates), bgl.TRAIN_SHARE)
    cuts = slices(train, cut, origins, window)
    vectors = vectors_for({x for s in cuts for x in s.fit.shapes + s.judged.shapes}, vectors_cache, embed)
    result = {"date": dt.datetime.now(dt.timezone.utc).isoformat(), "data": str(data), "files": [f.name for f in files],
              "cut_utc": dt.datetime.fromtimestamp(cut, dt.timezone.utc).isoformat()[:19],
              "training_lines": sum(len(s.records) for s in train), "origins": list(origins), "window": window,
              "methods": {"method": run_method(train, cut, cuts, vectors, window, seed, loco_origin)}}
    for name in variants:  # "a+b": both changes at once
        with contextlib.ExitStack() as stack:
            for part in name.split("+"):
                stack.enter_context(VARIANTS[part]())
            result["methods"][name] = run_method(train, cut, cuts, vectors, window, seed, loco_origin)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _p(e: dict) -> str:
    return f"P={e['p']:.2f}" if e.get("p") is not None else "      "


def report(r: dict, families: int = 12) -> str:
    out = [f"BGL inner validation: {r['training_lines']:,} training lines (cut {r['cut_utc']} UTC), origins "
           f"{r['origins']}, windows of {r['window']}; {r['seconds']} s"]
    for name, m in r["methods"].items():
        p = m["pooled"]["line"]
        out.append(f"\n== {name}: pooled lines P {p['precision']:.4f} R {p['recall']:.4f} F1 {p['f1']:.4f} "
                   f"FPR {p['fpr'] * 100:.3f}% (tp {p['tp']} fp {p['fp']} fn {p['fn']} tn {p['tn']}); windows F1 "
                   f"{m['pooled']['window']['f1']:.4f} (fp {m['pooled']['window']['fp']} fn {m['pooled']['window']['fn']})")
        for x in m["slices"]:
            ln, j = x["line"], x["judge"]
            out.append(f"  origin {x['origin']:.2f} ({x['from_utc']} .. {x['to_utc']}): fit {x['fit_lines']:,} lines "
                       f"({x['fit_alerts']} alerts), judged {ln['lines']:,} ({ln['anomalies']} alerts): tp {ln['tp']} fp "
                       f"{ln['fp']} fn {ln['fn']}, F1 {ln['f1']:.4f}, FPR {ln['fpr'] * 100:.3f}%; judge "
                       + (f"C={j['c']:g} tau={j['tau']:.2f}" if j else "none"))
            for e in x["false_alarms"][:families]:
                out.append(f"    FP {e['lines']:>4} {e['path']:<11} {_p(e)} {e['event']:<8} {e['shape'][:100]}")
            for e in x["misses"][:families]:
                out.append(f"    FN {e['lines']:>4} {e['path']:<11} {_p(e)} {e['category']:<9} {e['event']:<8} {e['shape'][:90]}")
            for e in x["new_template_catches"][:families]:
                out.append(f"    TP {e['lines']:>4} {e['path']:<11} {_p(e)} {e['category']:<9} {e['event']:<8} {e['shape'][:90]}")
        if "loco" in m:
            lo = m["loco"]
            out.append(f"  leave one category out at origin {lo['origin']}:")
            for c, x in lo.items():
                if isinstance(x, dict):
                    out.append(f"    {c:<10} fit lines left out {x['train_lines']:>5}, lines {x['lines']:>5}, line recall "
                               f"{x['line_recall']:.3f}, slice FPR {x.get('line_fpr', 0) * 100:.3f}%")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "bgl"))
    ap.add_argument("--origins", default=",".join(map(str, ORIGINS)), help="quantiles of the training lines' times")
    ap.add_argument("--window", type=int, default=bgl.WINDOW)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", default=[],
                    help=f"a method variant judged beside the method, one of {sorted(VARIANTS)}, or several joined by +")
    ap.add_argument("--loco", action="store_true", help="leave one category out at --loco-origin")
    ap.add_argument("--loco-origin", type=float, default=0.8)
    ap.add_argument("--vectors", default=str(REPO / "var" / "bgl_inner" / "vectors.npz"))
    ap.add_argument("--json", default=str(REPO / "var" / "bgl_inner" / "result.json"))
    a = ap.parse_args(argv)
    origins = tuple(float(x) for x in a.origins.split(","))
    unknown = [v for name in a.variant for v in name.split("+") if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown}; known: {sorted(VARIANTS)}")
    r = inner_validation(Path(a.data), origins, a.window, a.seed, tuple(a.variant),
                         a.loco_origin if a.loco else None, Path(a.vectors) if a.vectors else None)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(r, indent=1, default=float))
    print(report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
