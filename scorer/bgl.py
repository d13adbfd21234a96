"""BGL through train and evaluate: line verdicts from the line ensemble, window verdicts, baselines.

Protocol (docs/evaluation.md, BGL): the samples are random draws over the whole log, all spanning
2005-06 to 2006-01, so a held-out *sample* is not later in time than the training ones. The split is
chronological instead: one cut time, the `train_share` quantile of every line's time; every line at or
before it trains, every line after it is judged, in every sample. No training line is later than a
judged one.
- Lines: the ensemble (scorer/ensemble.py) learns P(alert) per masked shape from the line labels,
  plus `NovelTemplates` (a never-seen template at an alerting level is evidence too),
  split off by the family's parser (ingest/families/bgl.py) and never in what the members read.
- Windows: `window` consecutive lines of one sample (time order); anomalous when any line is an alert;
  logmesh flags a window when it flags any line in it. Baselines: a decision tree and a logistic
  regression on the window's event counts (scorer/baselines.py), fitted on the training windows.
- Leave one category out: for each alert category with enough training lines, the members and the
  baselines are refit without it and judged on its lines (none of which they saw).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from logmesh.ingest.bgl_templates import TEMPLATES_FILE, BglTemplates
from logmesh.ingest.families import UnknownFormat, detect
from logmesh.ingest.families.base import LineRecord
from logmesh.ingest.families.bgl import BglFamily
from logmesh.ingest.reader import ReadStats, iter_lines
from logmesh.ingest.templates_drain import DrainTemplates
from logmesh.scorer.rate_evidence import window_normal

log = logging.getLogger("logmesh.train")
Embed = Callable[[list[str]], np.ndarray]
WINDOW = 100
TRAIN_SHARE = 0.8
BGL_PREVALENCE = 348_460 / 4_747_963  # alert lines in the full BGL log (loghub)
#: categories with fewer training lines than this are not left out (too few to say anything)
LOCO_MIN_LINES = 10


@dataclasses.dataclass
class Sample:
    name: str
    records: list[LineRecord]
    labels: list[str | None]   # ground truth, kept apart from the records
    unparsed: int = 0

    @property
    def times(self) -> np.ndarray:
        t, last = [], 0.0
        for r in self.records:
            last = r.time if r.time is not None else last  # an unparsed line sits at its neighbour's time
            t.append(last)
        return np.asarray(t)


def bgl_files(path: Path) -> list[Path]:
    """The BGL logs of a file or folder (every *.log whose first lines are BGL), in name order."""
    files = [path] if path.is_file() else sorted(path.glob("*.log"))
    out = []
    for f in files:
        try:
            if detect(f) == "bgl":
                out.append(f)
        except UnknownFormat:
            continue
    return out


def read_samples(files: list[Path], templates: BglTemplates | None, stats: ReadStats | None = None) -> list[Sample]:
    family = BglFamily(templates)
    samples = []
    for path in files:
        records, labels, bad = [], [], 0
        for _, number, text in iter_lines(path, stats):
            if not text:
                continue
            p = family.parse(text, number)
            records.append(p.record)
            labels.append(p.label)
            bad += not p.record.parsed
        samples.append(Sample(path.name, records, labels, bad))
    return samples


def split_time(samples: list[Sample], share: float = TRAIN_SHARE) -> float:
    return float(np.quantile(np.concatenate([s.times for s in samples]), share))


def windows(idx: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive runs of `size` line indices (the last one may be shorter)."""
    return [idx[i:i + size] for i in range(0, len(idx), size)]


@dataclasses.dataclass
class Part:
    """The lines of one side of the split, flattened over samples, plus their windows."""
    shapes: list[str]
    events: list[str]
    truth: np.ndarray          # 1 = alert line
    categories: list[str | None]
    windows: list[np.ndarray]  # index arrays into the flattened lines
    levels: list[str] = dataclasses.field(default_factory=list)

    def window_truth(self) -> np.ndarray:
        return np.asarray([bool(self.truth[w].any()) for w in self.windows])

    def window_events(self) -> list[list[str]]:
        return [[self.events[i] for i in w] for w in self.windows]

    def normal_window_events(self) -> list[list[str]]:
        """The events of each window without an alert line (scorer/rate_evidence.window_normal: what a flagged
        session's burst is tested against)."""
        return [[self.events[i] for i in w] for w, alert in zip(self.windows, self.window_truth()) if not alert]


def make_part(samples: list[Sample], keep: Callable[[np.ndarray], np.ndarray], drain: DrainTemplates,
              size: int) -> Part:
    shapes, events, cats, wins, levels, n = [], [], [], [], [], 0
    for s in samples:
        t = s.times
        chosen = np.flatnonzero(keep(t))
        chosen = chosen[np.argsort(t[chosen], kind="stable")]  # time order inside the sample
        for i in chosen:
            r = s.records[i]
            shapes.append(r.shape)
            events.append(drain.event_id(r.template_id, f"{r.component} {r.level}" if r.parsed else "", r.message))
            cats.append(s.labels[i])
            levels.append(r.level)
        wins += windows(np.arange(n, n + len(chosen)), size)
        n += len(chosen)
    return Part(shapes, events, np.asarray([c is not None for c in cats], int), cats, wins, levels)


def fit_lines(shapes: list[str], truth: np.ndarray, vectors: dict[str, np.ndarray], seed: int):
    """The line ensemble on distinct (shape, label) rows, each weighted by how many lines it stands for."""
    from logmesh.scorer.ensemble import LineEnsemble
    rows = Counter(zip(shapes, truth.tolist()))
    keys = list(rows)
    x = [k[0] for k in keys]
    y = np.asarray([k[1] for k in keys])
    w = np.asarray([rows[k] for k in keys], np.float64)
    return LineEnsemble(seed).fit(x, np.stack([vectors[s] for s in x]), y, w)


@dataclasses.dataclass
class NovelTemplates:
    """Evidence the members cannot have learnt: a line whose template training never saw, at a severity level
    where alerts are common in training (BGL: FATAL). The members judge kinds of line they were shown; the next
    failure type is one nobody labelled (issue 16), so a never-seen template at an alerting level is flagged,
    unless its `kin` (known templates opening with the same words, scorer/bgl_novelty.py) are all normal; kin that
    are all alerts flag it; without agreeing kin, `judge` (a template-level text model, its threshold chosen on a
    validation slice inside training) decides whether its text is that of the normal templates at that level
    (register dumps and the like).

    It also remembers the known templates at an alerting level whose training lines were mostly alerts
    (`alert_templates`) and flags their lines. Why: the members learn from (shape, label) rows weighted by their
    lines, so a kind of alert seen on a few lines among tens of thousands of normal ones is outvoted:
    `rts: kernel terminated for reason <NUM>` on 10 training alert lines and no normal one got P(alert) 0, 0.2,
    1, 1, 0 from the five members, and its next 178 lines were missed (bench/bgl_inner.py, origin 0.9)."""
    seen: set[str]
    alerting_levels: set[str]
    judge: object = None  # TemplateJudge; absent from artifacts made before it (every new template then flagged)
    kin: object = None    # Kin (scorer/bgl_novelty.py); absent from artifacts made before it (the judge decides all)
    #: known templates at an alerting level whose training lines were mostly alerts: their lines are flagged whatever
    #: the members say (absent from artifacts made before it: none)
    alert_templates: set = dataclasses.field(default_factory=set)

    @classmethod
    def fit(cls, events: list[str], levels: list[str], truth: np.ndarray, min_share: float = 0.1,
            shapes: list[str] | None = None, judge: tuple[float, float] | None = None) -> "NovelTemplates":
        """`judge`: (C, tau) of a TemplateJudge to fit on these lines' templates; with `shapes`, the templates'
        kin are learnt too (a new template with kin of one label takes it, before the judge)."""
        n, alerts = Counter(levels), Counter(l for l, y in zip(levels, truth.tolist()) if y)
        out = cls(set(events) - {"unknown"}, {l for l in n if l and alerts[l] / n[l] >= min_share})
        lines, alert_lines = Counter(), Counter()
        for e, l, y in zip(events, levels, truth.tolist()):
            if l in out.alerting_levels and e != "unknown":
                lines[e] += 1
                alert_lines[e] += int(y)
        out.alert_templates = {e for e in lines if 2 * alert_lines[e] > lines[e]}
        if shapes is not None:
            from logmesh.scorer.bgl_novelty import Kin, TemplateJudge, template_rows
            rows = template_rows(shapes, events, levels, truth, out.alerting_levels)
            out.kin = Kin.fit(*rows)
            if judge is not None:
                out.judge = TemplateJudge(*judge).fit(*rows)
        return out

    def new(self, events: list[str], levels: list[str]) -> np.ndarray:
        """Lines of a template training never saw, at an alerting level (before kin and judge)."""
        return np.asarray([e not in self.seen and l in self.alerting_levels for e, l in zip(events, levels)], bool)

    def kin_labels(self, shapes: list[str]) -> np.ndarray:
        """Per shape, the label its kin templates agree on (1, 0) or NO_KIN (-1); all NO_KIN without kin."""
        kin = getattr(self, "kin", None)
        return kin.labels(shapes) if kin is not None else np.full(len(shapes), -1, int)

    def known_alerts(self, events: list[str], levels: list[str]) -> np.ndarray:
        """Lines of a known template at an alerting level whose training lines were mostly alerts."""
        known = getattr(self, "alert_templates", set())
        return np.asarray([e in known and l in self.alerting_levels for e, l in zip(events, levels)], bool)

    def flags(self, events: list[str], levels: list[str], shapes: list[str] | None = None) -> np.ndarray:
        """Lines flagged by the template rules: a known alert template, or a new one (kin, then the judge)."""
        return self.new_flags(events, levels, shapes) | self.known_alerts(events, levels)

    def new_flags(self, events: list[str], levels: list[str], shapes: list[str] | None = None) -> np.ndarray:
        """Lines of a never-seen template at an alerting level that kin or the judge (or, without shapes, the
        template's novelty alone) flag."""
        new = self.new(events, levels)
        if shapes is None or not new.any():
            return new
        where = np.flatnonzero(new)
        chosen = [shapes[i] for i in where]
        kin = self.kin_labels(chosen)
        keep = kin == 1
        judge = getattr(self, "judge", None)
        undecided = np.flatnonzero(kin == -1)
        keep[undecided] = judge.passes([chosen[i] for i in undecided]) if judge is not None else True
        new[where] = keep
        return new


def predict_lines(ensemble, shapes: list[str], vectors: dict[str, np.ndarray]) -> np.ndarray:
    from logmesh.scorer.ensemble import majority
    distinct = sorted(set(shapes))
    if not distinct:
        return np.zeros(0, bool)
    verdict = majority(ensemble.probabilities(distinct, np.stack([vectors[s] for s in distinct])))
    by_shape = dict(zip(distinct, verdict.tolist()))
    return np.asarray([by_shape[s] for s in shapes], bool)


def embed_shapes(embed: Embed, shapes, known: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    vectors = dict(known or {})
    new = sorted(set(shapes) - set(vectors))
    if new:
        vectors.update(zip(new, np.asarray(embed(new), np.float32)))
    return vectors


def rates(truth, predicted, what: str) -> dict:
    from logmesh.scorer.validation import summarize
    s = summarize(np.asarray(truth), np.asarray(predicted), BGL_PREVALENCE)
    keep = ("precision", "recall", "f1", "fpr", "tp", "fp", "fn", "tn", "recall_ci95", "fpr_ci95")
    return {**{k: s[k] for k in keep}, what: s["sessions"], "anomalies": s["anomalies"]}


def fit_line_baselines(events: list[str], truth: np.ndarray, seed: int) -> dict:
    """The line-level baselines: a decision tree and a logistic regression on the line's event (a one-event count
    vector), fitted on the same training lines as the ensemble."""
    from logmesh.scorer.baselines import make_baselines
    baselines = make_baselines(seed)
    for b in baselines.values():
        b.fit([[e] for e in events], truth.astype(int).tolist())
    return baselines


def line_baseline_flags(baseline, events: list[str]) -> np.ndarray:
    distinct = sorted(set(events))
    if not distinct:
        return np.zeros(0, bool)
    by_event = dict(zip(distinct, (baseline.probabilities([[e] for e in distinct]) >= 0.5).tolist()))
    return np.asarray([by_event[e] for e in events], bool)


def line_vote_shares(ensemble, shapes: list[str], vectors: dict[str, np.ndarray]) -> np.ndarray:
    """Per line, the share of the ensemble's members voting anomaly: the score whose > 0.5 is predict_lines'
    majority (what --plot draws the line ensemble's curve and histogram from)."""
    from logmesh.scorer.ensemble import anomaly_votes
    distinct = sorted(set(shapes))
    if not distinct:
        return np.zeros(0)
    p = ensemble.probabilities(distinct, np.stack([vectors[s] for s in distinct]))
    by_shape = dict(zip(distinct, (anomaly_votes(p) / p.shape[1]).tolist()))
    return np.asarray([by_shape[s] for s in shapes], float)


def pictured(models: dict, part: Part, vectors: dict[str, np.ndarray], line_pred: np.ndarray,
             novel: np.ndarray, window_pred: np.ndarray) -> dict:
    """What scorer/plots.py draws for a BGL evaluation, per level ("lines", "windows"): (truth, models) with
    each model's scores, verdicts and threshold. logmesh's line score is its members' vote share (1 for a line
    the new-template rule flags), its window score the highest line score in the window (a window is flagged
    when a line is); the baselines' scores are their probabilities (threshold 0.5, as judged)."""
    line_score = np.where(novel, 1.0, line_vote_shares(models["line"], part.shapes, vectors))
    lines = {"logmesh": {"scores": line_score, "predicted": line_pred, "threshold": 0.5}}
    for name, b in (models.get("line_baselines") or {}).items():
        distinct = sorted(set(part.events))
        by_event = dict(zip(distinct, np.asarray(b.probabilities([[e] for e in distinct]), float).tolist())) if distinct else {}
        s = np.asarray([by_event[e] for e in part.events], float)
        lines[name] = {"scores": s, "predicted": s >= 0.5, "threshold": 0.5}
    windows = {"logmesh": {"scores": np.asarray([float(line_score[w].max()) if len(w) else 0.0 for w in part.windows]),
                           "predicted": window_pred, "threshold": 0.5}}
    for name, b in models["baselines"].items():
        s = np.asarray(b.probabilities(part.window_events()), float)
        windows[name] = {"scores": s, "predicted": s >= 0.5, "threshold": 0.5}
    return {"lines": (part.truth.astype(bool), lines), "windows": (part.window_truth(), windows)}


def judge(models: dict, part: Part, vectors: dict[str, np.ndarray], size: int, verdicts: bool = False,
          pictures: bool = False) -> dict:
    """Line and window figures of logmesh, and window figures of the baselines, on one part; with `verdicts`,
    also every line's verdict (in judged order); with `pictures`, under "pictured" what `pictured` gives (arrays:
    the caller draws and removes it)."""
    line_pred = predict_lines(models["line"], part.shapes, vectors)
    novel = (models["novel"].flags(part.events, part.levels, part.shapes) if models.get("novel")
             else np.zeros(len(line_pred), bool))
    line_pred = line_pred | novel
    window_pred = np.asarray([bool(line_pred[w].any()) for w in part.windows])
    wt = part.window_truth()
    out = {"line": rates(part.truth, line_pred, "lines"),
           "window": {**rates(wt, window_pred, "windows"), "size": size},
           "baselines": {name: {**rates(wt, b.probabilities(part.window_events()) >= 0.5, "windows"), "size": size}
                         for name, b in models["baselines"].items()},
           "line_baselines": {name: rates(part.truth, line_baseline_flags(b, part.events), "lines")
                              for name, b in (models.get("line_baselines") or {}).items()}}
    by_cat = Counter(c for c in part.categories if c)
    caught = Counter(c for c, p in zip(part.categories, line_pred) if c and p)
    out["line_recall_by_category"] = {c: {"lines": n, "detected": caught[c], "recall": caught[c] / n}
                                      for c, n in by_cat.most_common()}
    voted = predict_lines(models["line"], part.shapes, vectors)
    # known_alerts reads an old artifact's missing alert_templates as none
    known = (models["novel"].known_alerts(part.events, part.levels) if models.get("novel")
             else np.zeros(len(voted), bool))
    out["new_template_flags"] = int((novel & ~voted & ~known).sum()) if len(part.shapes) else 0
    out["known_alert_template_flags"] = int((known & ~voted).sum()) if len(part.shapes) else 0
    if verdicts:
        out["verdicts"] = line_pred.tolist()
    if pictures:
        out["pictured"] = pictured(models, part, vectors, line_pred, novel, window_pred)
    return out


def leave_one_category_out(train: Part, vectors: dict[str, np.ndarray], seed: int, min_lines: int = LOCO_MIN_LINES,
                           judged: Part | None = None, judge: tuple[float, float] | None = None) -> dict:
    """Per alert category: members and baselines trained without its lines (and without the windows that
    hold them), judged on every line/window of it in `train` and `judged` (none of them seen in training);
    `line_fpr`: the share of `judged`'s normal lines the refit detectors flag (what the recall costs)."""
    from logmesh.scorer.baselines import make_baselines
    counts = Counter(c for c in train.categories if c)
    parts = [train] + ([judged] if judged is not None else [])
    out = {}
    for cat, n in counts.most_common():
        if n < min_lines:
            continue
        keep = np.asarray([c != cat for c in train.categories])
        if len(set(train.truth[keep].tolist())) < 2:
            continue
        ensemble = fit_lines([s for s, k in zip(train.shapes, keep) if k], train.truth[keep], vectors, seed)
        novel = NovelTemplates.fit([e for e, k in zip(train.events, keep) if k],
                                   [l for l, k in zip(train.levels, keep) if k], train.truth[keep],
                                   shapes=[s for s, k in zip(train.shapes, keep) if k], judge=judge)
        line_baselines = fit_line_baselines([e for e, k in zip(train.events, keep) if k], train.truth[keep], seed)
        lines_caught = Counter()
        held_windows = [w for w in train.windows if keep[w].all()]
        baselines = make_baselines(seed)
        for b in baselines.values():
            b.fit([[train.events[i] for i in w] for w in held_windows], [int(train.truth[w].any()) for w in held_windows])
        lines = detected = wins = 0
        wins_caught = Counter()
        for p in parts:
            mine = [i for i, c in enumerate(p.categories) if c == cat]
            pred = predict_lines(ensemble, [p.shapes[i] for i in mine], vectors) | novel.flags(
                [p.events[i] for i in mine], [p.levels[i] for i in mine], [p.shapes[i] for i in mine])
            for name, b in line_baselines.items():
                lines_caught[name] += int(line_baseline_flags(b, [p.events[i] for i in mine]).sum())
            lines += len(mine)
            detected += int(pred.sum())
            holding = [w for w in p.windows if any(p.categories[i] == cat for i in w)]
            wins += len(holding)
            line_pred = dict(zip(mine, pred.tolist()))
            events = [[p.events[i] for i in w] for w in holding]
            for name, b in baselines.items():
                wins_caught[name] += int((b.probabilities(events) >= 0.5).sum()) if events else 0
            # logmesh's window verdict: any flagged line (lines of other categories count too, as when served)
            flat = [i for w in holding for i in w]
            other = predict_lines(ensemble, [p.shapes[i] for i in flat], vectors) | novel.flags(
                [p.events[i] for i in flat], [p.levels[i] for i in flat], [p.shapes[i] for i in flat])
            k = 0
            for w in holding:
                wins_caught["logmesh"] += int(other[k:k + len(w)].any())
                k += len(w)
        # what that recall costs: the refit detectors on the judged part's normal lines and windows
        fpr = {}
        if judged is not None:
            normal = np.flatnonzero(judged.truth == 0)
            flags = predict_lines(ensemble, [judged.shapes[i] for i in normal], vectors) | novel.flags(
                [judged.events[i] for i in normal], [judged.levels[i] for i in normal],
                [judged.shapes[i] for i in normal])
            fpr["line_fpr"] = float(flags.mean()) if len(normal) else 0.0
            quiet = [w for w in judged.windows if not judged.truth[w].any()]
            if quiet:
                ev = [[judged.events[i] for i in w] for w in quiet]
                fpr.update({f"window_fpr_{name}": float((b.probabilities(ev) >= 0.5).mean()) for name, b in baselines.items()})
        out[cat] = {"train_lines": n, "lines": lines, "line_recall": detected / lines if lines else 0.0, **fpr,
                    **{f"line_recall_{m}": (lines_caught[m] / lines if lines else 0.0) for m in line_baselines},
                    "windows": wins, **{f"window_recall_{m}": (wins_caught[m] / wins if wins else 0.0)
                                        for m in ("logmesh", "decision_tree", "logistic_regression")}}
    return out


def select_judge(samples: list[Sample], cut: float, window: int, vectors: dict[str, np.ndarray], seed: int):
    """C and tau of the new-template judge, chosen on a chronological validation slice of the training part
    (scorer/bgl_novelty.py); None when the slice cannot choose (one class before the inner cut, or no alert).
    The members' votes there include the known alert templates (NovelTemplates.known_alerts), as when served.
    (Choosing on left-out training templates instead, bgl_novelty.select_by_templates, is bench/bgl_inner.py's
    `loto-judge` variant: better inside training, worse on the judged part; docs/evaluation.md, BGL.)"""
    from logmesh.scorer.bgl_novelty import VALIDATION_SHARE, TemplateJudge, select, template_rows
    times = np.concatenate([s.times for s in samples])
    inner_cut = float(np.quantile(times[times <= cut], VALIDATION_SHARE))
    drain = DrainTemplates()
    inner = make_part(samples, lambda t: t <= inner_cut, drain, window)
    drain.freeze()
    val = make_part(samples, lambda t: (t > inner_cut) & (t <= cut), drain, window)
    if len(set(inner.truth.tolist())) < 2 or not val.truth.any():
        return None
    ensemble = fit_lines(inner.shapes, inner.truth, vectors, seed)
    novel = NovelTemplates.fit(inner.events, inner.levels, inner.truth, shapes=inner.shapes)
    new = novel.new(val.events, val.levels)
    kin = np.full(len(new), -1, int)
    kin[new] = novel.kin_labels([val.shapes[i] for i in np.flatnonzero(new)])
    flagged = new & (kin == -1)  # what the judge decides; kin decide the rest, as when served
    voted = predict_lines(ensemble, val.shapes, vectors) | (new & (kin == 1)) | novel.known_alerts(val.events, val.levels)
    rows = template_rows(inner.shapes, inner.events, inner.levels, inner.truth, novel.alerting_levels)
    selection = select(val.truth, voted, flagged,
                       [val.shapes[i] for i in np.flatnonzero(flagged)], lambda c: TemplateJudge(c, 0.0).fit(*rows))
    log.info("chose the new-template judge on the validation slice", extra=selection.as_dict())
    return selection


def fit_models(samples: list[Sample], cut: float, train: Part, drain: DrainTemplates, window: int,
               vectors: dict[str, np.ndarray], seed: int) -> tuple[dict, object]:
    """Every model of the method on `train` (the lines of `samples` at or before `cut`; `drain` fitted on them and
    frozen): the line ensemble, the window and line baselines, the new-template rule with its kin and its judge
    (C and tau chosen by `select_judge` inside `train`). What `train_bgl` saves, and what the inner validation
    (bench/bgl_inner.py) refits at earlier origins. Returns (models, the judge's Selection or None)."""
    from logmesh.scorer.baselines import make_baselines
    ensemble = fit_lines(train.shapes, train.truth, vectors, seed)
    baselines = make_baselines(seed)
    for b in baselines.values():
        b.fit(train.window_events(), train.window_truth().astype(int).tolist())
    selection = select_judge(samples, cut, window, vectors, seed)
    judge_params = (selection.c, selection.tau) if selection else None
    novel = NovelTemplates.fit(train.events, train.levels, train.truth, shapes=train.shapes, judge=judge_params)
    models = {"family": "bgl", "line": ensemble, "novel": novel, "block": None, "baselines": baselines, "drain": drain,
              "templates": None, "line_baselines": fit_line_baselines(train.events, train.truth, seed),
              # only names a flagged session's kind (scorer/bgl_serving.py); absent from older artifacts: none named
              "window_normal": window_normal(train.normal_window_events())}
    return models, selection


def train_bgl(data: Path, out_dir: Path, embed: Embed, seed: int = 0, window: int = WINDOW,
              train_share: float = TRAIN_SHARE, loco: bool = True) -> Path:
    """Fits the BGL artifact on the lines before the cut time; judges the lines after it (held out)."""
    from logmesh.scorer import artifacts
    from logmesh.scorer.train import file_digest
    started = time.perf_counter()
    files = bgl_files(data)
    if not files:
        raise FileNotFoundError(f"no BGL log in {data}: give loghub BGL *.log files (LABEL EPOCH DATE NODE ...)")
    tfile = (data if data.is_dir() else data.parent) / TEMPLATES_FILE
    templates = BglTemplates.read(tfile) if tfile.exists() else None
    stats = ReadStats()
    samples = read_samples(files, templates, stats)
    cut = split_time(samples, train_share)
    drain = DrainTemplates()
    train = make_part(samples, lambda t: t <= cut, drain, window)
    drain.freeze()
    held = make_part(samples, lambda t: t > cut, drain, window)
    vectors = embed_shapes(embed, train.shapes + held.shapes)
    if len(set(train.truth.tolist())) < 2:
        raise ValueError(f"the training part of {data} holds only {'alert' if train.truth.any() else 'normal'} lines; "
                         "the line ensemble needs both")
    models, selection = fit_models(samples, cut, train, drain, window, vectors, seed)
    models["templates"] = templates
    ensemble, novel = models["line"], models["novel"]
    judge_params = (selection.c, selection.tau) if selection else None
    kin = None
    if judge_params is not None:
        from logmesh.scorer.bgl_novelty import kin_check, template_rows
        kin = kin_check(*template_rows(train.shapes, train.events, train.levels, train.truth, novel.alerting_levels),
                        *judge_params)
    held_out = judge(models, held, vectors, window)
    log.info("judged the held-out part", extra={"lines": len(held.shapes), "f1": round(held_out["line"]["f1"], 4)})
    left_out = leave_one_category_out(train, vectors, seed, judged=held, judge=judge_params) if loco else {}
    meta = {
        "family": "bgl",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "members": ensemble.names,
        "embedding_model": "all-MiniLM-L6-v2",
        "data": {"dir": str(data), "files": {p.name: file_digest(p) for p in files},
                 "lines": stats.lines, "unparsed_lines": sum(s.unparsed for s in samples),
                 "alert_lines": int(train.truth.sum() + held.truth.sum()),
                 "templates": len(templates.templates) if templates else 0,
                 "lines_without_loghub_template": sum(r.template_id == "unknown" for s in samples for r in s.records),
                 "drain_templates": len(drain.templates)},
        "split": {"protocol": f"chronological: one cut time over all samples (the {train_share:.0%} quantile of line "
                              "times); lines at or before it train, lines after it are judged",
                  "train_until": cut, "train_until_utc": dt.datetime.fromtimestamp(cut, dt.timezone.utc).isoformat(),
                  "train_lines": len(train.shapes), "train_alerts": int(train.truth.sum()),
                  "test_lines": len(held.shapes), "test_alerts": int(held.truth.sum())},
        "window": window,
        "held_out": held_out,
        "leave_one_category_out": left_out,
        "line_verdict": "majority of members voting P(alert) >= 0.5 on the line's masked shape, or a known template "
                        "at an alerting level whose training lines were mostly alerts, or a template training never "
                        "saw at a level where >= 10% of training lines are alerts whose kin (known templates opening "
                        "with the same three words) are all alerts, or, without kin of one label, whose text the "
                        "template judge gives P(alert) >= tau",
        "alerting_levels": sorted(novel.alerting_levels),
        "new_template_judge": ({**selection.as_dict(), "protocol": "C and tau chosen for the best line F1 on the "
                                "training lines after the 80% quantile of the training lines' times, with every "
                                "model fitted on the training lines before it"} if selection else None),
        "known_alert_templates": len(novel.alert_templates),
        "new_template_kin": kin,  # leave one training template out: kin against the judge (bgl_novelty.kin_check)
        "train_seconds": round(time.perf_counter() - started, 2),
    }
    version = artifacts.new_version(file_digest(files[0]))
    path = artifacts.save(out_dir, version, models, meta)
    log.info("saved artifact", extra={"path": str(path), "seconds": meta["train_seconds"]})
    return path


def evaluate_bgl(model_dir: Path, logs: Path, embed: Embed | None = None, window: int | None = None,
                 all_lines: bool = False, verdicts: bool = False, plot_dir: Path | None = None) -> dict:
    """The newest BGL artifact on BGL logs. Lines of the training files up to the cut time are skipped
    (they trained the model) unless `all_lines`; lines of other files are all judged. `plot_dir`: the pictures
    of scorer/plots.py there, for lines and for windows (logmesh and the baselines, the same lines/windows)."""
    from logmesh.scorer import artifacts
    from logmesh.scorer.train import file_digest
    version = artifacts.newest(Path(model_dir))
    if version is None:
        raise artifacts.ArtifactError(f"no model artifact in {model_dir}; make one with `logmesh train --format bgl`")
    artifact = artifacts.load(Path(model_dir), version)
    if artifact.meta.get("family") != "bgl":
        raise artifacts.ArtifactError(f"the newest artifact in {model_dir} ({version}) was trained on "
                                      f"{artifact.meta.get('family', 'hdfs')} logs, not BGL; train one with "
                                      "`logmesh train --format bgl --data DIR --out DIR`")
    size = window or artifact.meta["window"]
    files = bgl_files(Path(logs))
    if not files:
        raise FileNotFoundError(f"no BGL log in {logs}: give loghub BGL *.log files (LABEL EPOCH DATE NODE ...)")
    trained = artifact.meta["data"]["files"]
    cut = artifact.meta["split"]["train_until"]
    overlap = [f.name for f in files if trained.get(f.name) == file_digest(f)]
    stats = ReadStats()
    samples = read_samples(files, artifact.models["templates"], stats)
    drain = artifact.models["drain"]
    judged_files = []
    parts = []
    for s in samples:
        skip = s.name in overlap and not all_lines
        parts.append(make_part([s], (lambda t: t > cut) if skip else (lambda t: np.ones(len(t), bool)), drain, size))
        judged_files.append({"file": s.name, "lines": len(s.records), "unparsed": s.unparsed,
                             "judged": "after the training cut" if skip else "all lines"})
    part = Part([x for p in parts for x in p.shapes], [x for p in parts for x in p.events],
                np.concatenate([p.truth for p in parts]), [x for p in parts for x in p.categories], [],
                [x for p in parts for x in p.levels])
    n = 0
    for p in parts:  # windows never span two files
        part.windows += [w + n for w in p.windows]
        n += len(p.shapes)
    embed = embed or _default_embed()
    vectors = embed_shapes(embed, part.shapes)
    result = judge(artifact.models, part, vectors, size, verdicts, pictures=plot_dir is not None)
    if plot_dir is not None:
        from logmesh.scorer import plots
        drawn = result.pop("pictured")
        names = ", ".join(f.name for f in files)
        result["plots"] = [str(p) for level, (truth, models) in drawn.items() for p in plots.write(
            Path(plot_dir), truth, models, f"model {version} on {names} ({len(truth):,} {level})",
            prefix=f"{level}_", unit=level)]
    result.update({
        "family": "bgl", "model": {"version": version, "train_until_utc": artifact.meta["split"]["train_until_utc"]},
        "logs": {"paths": [str(f) for f in files], "lines": stats.lines, "files": judged_files},
        "split": artifact.meta["split"]["protocol"] if overlap and not all_lines else "files the model never saw",
        "leave_one_category_out": artifact.meta.get("leave_one_category_out", {}),
    })
    if overlap and all_lines:
        result["warning"] = (f"the logs overlap the model's training data ({', '.join(overlap)}) and --all-lines "
                             "judges the training lines too: these figures are partly in-sample")
    return result


def _default_embed() -> Embed:
    from logmesh.embedder.encoder import SentenceEncoder
    return SentenceEncoder(threads=2).encode


def _row(name: str, m: dict) -> str:
    return (f"{name:<46} {m['precision']:>9.4f} {m['recall']:>7.4f} {m['f1']:>7.4f} {m['fpr'] * 100:>8.3f}% "
            f"{m['tp']:>6} {m['fp']:>6} {m['fn']:>6} {m['tn']:>7}")


def format_table(r: dict) -> str:
    out = [f"model {r['model']['version']} (BGL, trained on lines up to {r['model']['train_until_utc'][:19]})   "
           f"judged: {r['split']}"]
    for f in r["logs"]["files"]:
        out.append(f"  {f['file']}: {f['lines']:,} lines ({f['unparsed']} unparsed, kept), {f['judged']}")
    out.append(f"{'':<46} {'precision':>9} {'recall':>7} {'f1':>7} {'fpr':>9} {'tp':>6} {'fp':>6} {'fn':>6} {'tn':>7}")
    out.append(_row(f"logmesh lines ({r['line']['lines']:,}, {r['line']['anomalies']:,} alerts)", r["line"]))
    for name, m in r.get("line_baselines", {}).items():
        out.append(_row(f"baseline lines: {name}", m))
    w = r["window"]
    out.append(_row(f"logmesh windows of {w['size']} ({w['windows']:,}, {w['anomalies']:,} anomalous)", w))
    for name, m in r["baselines"].items():
        out.append(_row(f"baseline windows: {name}", m))
    if r.get("warning"):
        out.append("WARNING: " + r["warning"])
    loco = r.get("leave_one_category_out")
    if loco:
        out.append("leave one category out (trained without it; its lines and windows judged):")
        out.append(f"  {'category':<10} {'lines':>6} {'line recall':>11} {'line fpr':>9} {'windows':>7} {'logmesh':>8} "
                   f"{'tree':>6} {'logreg':>6}")
        for c, x in loco.items():
            fpr = f"{x['line_fpr'] * 100:.3f}%" if "line_fpr" in x else "n/a"
            out.append(f"  {c:<10} {x['lines']:>6} {x['line_recall']:>11.3f} {fpr:>9} {x['windows']:>7} "
                       f"{x['window_recall_logmesh']:>8.3f} {x['window_recall_decision_tree']:>6.3f} "
                       f"{x['window_recall_logistic_regression']:>6.3f}")
    if r.get("plots"):
        out.append("plots: " + ", ".join(r["plots"]))
    return "\n".join(out)
