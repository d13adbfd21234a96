"""Honest validation of session models: what a model is worth on sessions it has not seen.

HDFS repeats exact event sequences (sessions_normal.txt: 4,854 sessions, 839 distinct sequences), so a
split by session puts the same sequence on both sides and measures recall of memory. Three protocols,
each run for logmesh and the baselines on the same splits:
- **grouped k-fold by distinct sequence** (`StratifiedGroupKFold`, groups = the event sequence and
  whether it ended), repeated with other shuffles: no sequence is on both sides of a split;
- **held-out behaviour families**: every normal session of one family (the heaviest users of an
  event, holders of an event few normal sessions hold, the longest sessions) is taken out of
  training; the family must stay normal. This is what a model trained on the first hours of a log
  meets later in the same log;
- **chronological** for raw logs: the first 80% of each log's blocks (by first line) train, the rest
  test (Le & Zhang, ICSE 2022: random splits leak the future).
Rates come with exact (Clopper-Pearson) 95% intervals: 0 false positives in 971 normal sessions is
"FPR < 0.38%", not "0%".
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import numpy as np

HDFS_PREVALENCE = 16_838 / 575_061  # anomalous share of HDFS_v1 blocks: precision is quoted at it


@dataclasses.dataclass
class Blocks:
    """Labelled sessions with where they came from; `part` is "complete" or "cut"."""
    sessions: list[list[str]]
    labels: np.ndarray
    closed: np.ndarray
    part: np.ndarray
    source: np.ndarray
    order: np.ndarray  # position of the block in its source, by first line
    ids: np.ndarray | None = None  # block ids of raw-log blocks ("" for session-file sessions), for feedback

    def take(self, mask: np.ndarray) -> "Blocks":
        idx = np.flatnonzero(mask)
        return Blocks([self.sessions[i] for i in idx], self.labels[idx], self.closed[idx], self.part[idx],
                      self.source[idx], self.order[idx], None if self.ids is None else self.ids[idx])

    def __len__(self) -> int:
        return len(self.sessions)


Factory = Callable[[int], object]  # seed -> unfitted model with fit(sessions, labels, closed) / probabilities


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta
    if n == 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def summarize(truth: np.ndarray, predicted: np.ndarray, prevalence: float = HDFS_PREVALENCE) -> dict:
    truth = np.asarray(truth, bool)
    predicted = np.asarray(predicted, bool)
    tp = int((truth & predicted).sum())
    fp = int((~truth & predicted).sum())
    fn = int((truth & ~predicted).sum())
    tn = int((~truth & ~predicted).sum())
    recall = tp / (tp + fn) if tp + fn else 0.0
    fpr = fp / (fp + tn) if fp + tn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"sessions": len(truth), "anomalies": tp + fn, "normal": fp + tn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "recall": recall, "recall_ci95": clopper_pearson(tp, tp + fn), "fpr": fpr,
            "fpr_ci95": clopper_pearson(fp, fp + tn), "precision": precision, "f1": f1,
            "f1_at_prevalence": f1_at(recall, fpr, prevalence), "prevalence": prevalence}


def f1_at(recall: float, fpr: float, prevalence: float) -> float:
    """F1 a detector with this recall and FPR would have where `prevalence` of sessions are anomalous
    (the session files are 73% anomalous, HDFS_v1 2.9%: precision on the files flatters)."""
    caught, false = recall * prevalence, fpr * (1 - prevalence)
    precision = caught / (caught + false) if caught + false else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def sequence_groups(blocks: Blocks) -> np.ndarray:
    ids: dict[tuple, int] = {}
    return np.asarray([ids.setdefault((tuple(s), bool(c)), len(ids)) for s, c in zip(blocks.sessions, blocks.closed)])


def grouped_splits(blocks: Blocks, folds: int, seed: int):
    """(train indices, test indices) per fold; no (sequence, ended) group is on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold
    groups = sequence_groups(blocks)
    folds = min(folds, len(set(groups.tolist())))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train_idx, test_idx in splitter.split(np.zeros(len(blocks)), blocks.labels, groups):
        if set(groups[train_idx]) & set(groups[test_idx]):
            raise AssertionError("a sequence landed on both sides of a grouped split")
        yield train_idx, test_idx


def _fit_score(factory: Factory, seed: int, train: Blocks, test: Blocks):
    model = factory(seed)
    model.fit(train.sessions, train.labels.tolist(), train.closed.tolist())
    scores = model.probabilities(test.sessions, test.closed.tolist())
    return model, np.asarray(scores, np.float32)


def _parts(blocks: Blocks, predicted: np.ndarray) -> dict:
    out = {"all": summarize(blocks.labels, predicted)}
    for part in ("complete", "cut"):
        mask = blocks.part == part
        if mask.any():
            out[part] = summarize(blocks.labels[mask], predicted[mask])
    return out


def grouped_kfold(models: dict[str, Factory], blocks: Blocks, folds: int = 5, repeats: int = 2,
                  seed: int = 0, progress=None) -> tuple[dict, np.ndarray]:
    """Out-of-fold verdicts of each model, `repeats` times with other shuffles. Returns the metrics per
    model (each repeat, and the repeat with most false positives as `worst`) and each model's
    out-of-fold scores, one array per repeat (for choosing a threshold and judging at it)."""
    result: dict = {name: {"repeats": []} for name in models}
    all_scores: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for r in range(repeats):
        scores = {name: np.zeros(len(blocks), np.float32) for name in models}
        thresholds = {name: np.zeros(len(blocks), np.float32) for name in models}
        for k, (train_idx, test_idx) in enumerate(grouped_splits(blocks, folds, seed + r)):
            train, test = blocks.take(np.isin(np.arange(len(blocks)), train_idx)), blocks.take(
                np.isin(np.arange(len(blocks)), test_idx))
            for name, factory in models.items():
                model, s = _fit_score(factory, seed + r, train, test)
                scores[name][np.sort(test_idx)] = s
                thresholds[name][np.sort(test_idx)] = getattr(model, "threshold", 0.5)
            if progress:
                progress(f"grouped k-fold, repeat {r + 1}/{repeats}, fold {k + 1}/{folds}")
        for name in models:
            result[name]["repeats"].append(_parts(blocks, scores[name] >= thresholds[name]))
            all_scores[name].append(scores[name])
    for name in models:
        result[name]["worst"] = worst(result[name]["repeats"])
    return result, all_scores


def worst(repeats: list[dict]) -> dict:
    return max(repeats, key=lambda p: (p["all"]["fp"], p["all"]["fn"]))


def at_threshold(blocks: Blocks, scores: list[np.ndarray], threshold: float) -> dict:
    """The repeats' out-of-fold verdicts at one threshold."""
    repeats = [_parts(blocks, s >= threshold) for s in scores]
    return {"threshold": threshold, "repeats": repeats, "worst": worst(repeats)}


def behaviour_families(blocks: Blocks, heavy_events: int = 3, rare_share: float = 0.02,
                       min_size: int = 10) -> dict[str, np.ndarray]:
    """Families of normal complete sessions, found in the data rather than named by hand:
    `heavy:E` the normal sessions with the most of an event whose count varies most (many reads,
    retried reads), `rare:E` the holders of an event few normal sessions hold (re-replication), and
    `long` the longest 5%."""
    normal = (blocks.labels == 0) & blocks.closed
    idx = np.flatnonzero(normal)
    counts = [Counter(blocks.sessions[i]) for i in idx]
    holders = Counter(e for c in counts for e in c)
    families: dict[str, np.ndarray] = {}
    spread = []
    for e, n in holders.items():
        if n < max(min_size, 0.05 * len(idx)):
            continue
        values = np.asarray([c[e] for c in counts if c[e]])
        if values.max() > values.min():
            spread.append((float(np.std(values) / max(values.mean(), 1e-9)), e))
    for _, e in sorted(spread, reverse=True)[:heavy_events]:
        values = np.asarray([c[e] for c in counts])
        cut = np.percentile(values[values > 0], 95)
        mask = np.zeros(len(blocks), bool)
        mask[idx[values > cut if (values > cut).sum() >= min_size else values >= cut]] = True
        families[f"heavy:{e}"] = mask
    for e, n in sorted(holders.items()):
        if min_size <= n <= rare_share * len(idx):
            mask = np.zeros(len(blocks), bool)
            mask[idx[[c[e] > 0 for c in counts]]] = True
            families[f"rare:{e}"] = mask
    lengths = np.asarray([len(blocks.sessions[i]) for i in idx])
    if len(idx):
        mask = np.zeros(len(blocks), bool)
        mask[idx[lengths >= np.percentile(lengths, 95)]] = True
        families["long"] = mask
    # one family per distinct membership: rare:E6, rare:E16, rare:E18 and rare:E25 are the same sessions
    unique: dict[bytes, str] = {}
    for name, mask in families.items():
        unique.setdefault(np.packbits(mask).tobytes(), name)
    return {name: families[name] for name in unique.values()}


def family_holdout(models: dict[str, Factory], blocks: Blocks, seed: int = 0, progress=None,
                   folds: int = 5) -> dict:
    """For each behaviour family: train without its normal sessions, then count how many of them
    each model flags (they are normal; every flag is a false alarm). For a `rare:E` family also the
    other side of the coin: with its normal sessions in no training set, grouped k-fold over the rest,
    how many failing complete sessions holding E each model still catches (`failing_caught`): a model
    that keeps the family normal by ignoring E may miss the failures that hold it."""
    out: dict = {}
    for name, mask in behaviour_families(blocks).items():
        train, test = blocks.take(~mask), blocks.take(mask)
        row = {"sessions": len(test), "distinct_sequences": len({tuple(s) for s in test.sessions})}
        for model_name, factory in models.items():
            model, s = _fit_score(factory, seed, train, test)
            fp = int((s >= getattr(model, "threshold", 0.5)).sum())
            row[model_name] = {"flagged": fp, "fpr": fp / len(test), "fpr_ci95": clopper_pearson(fp, len(test))}
        if name.startswith("rare:") and folds:
            row["failing_caught"] = _failing_caught(models, train, name.split(":", 1)[1], folds, seed)
        out[name] = row
        if progress:
            progress(f"held-out family {name}")
    return out


def _failing_caught(models: dict[str, Factory], blocks: Blocks, event: str, folds: int, seed: int) -> dict:
    """Out-of-fold (grouped) verdicts on the failing complete sessions holding `event`, per model."""
    holding = np.asarray([event in s for s in blocks.sessions]) & (blocks.labels == 1) & (blocks.part == "complete")
    caught = {name: 0 for name in models}
    for train_idx, test_idx in grouped_splits(blocks, folds, seed):
        train, test = blocks.take(np.isin(np.arange(len(blocks)), train_idx)), blocks.take(
            np.isin(np.arange(len(blocks)), test_idx))
        judged = holding[np.sort(test_idx)]
        if not judged.any():
            continue
        for name, factory in models.items():
            model, s = _fit_score(factory, seed, train, test.take(judged))
            caught[name] += int((s >= getattr(model, "threshold", 0.5)).sum())
    return {"failing": int(holding.sum()), **caught}


def chronological(models: dict[str, Factory], blocks: Blocks, test_share: float = 0.2, seed: int = 0) -> dict:
    """Per raw log: its first (1 - test_share) blocks by first line and every session file train; its
    last blocks test."""
    out: dict = {}
    for source in sorted(set(blocks.source.tolist())):
        in_source = blocks.source == source
        n = int(in_source.sum())
        if n < 20 or source.startswith("sessions_"):
            continue
        cut = int(n * (1 - test_share))
        test_mask = in_source & (blocks.order >= cut)
        train, test = blocks.take(~test_mask), blocks.take(test_mask)
        row = {"part": str(test.part[0]) if len(test) else "", "train_blocks": len(train)}
        for model_name, factory in models.items():
            model, s = _fit_score(factory, seed, train, test)
            row[model_name] = summarize(test.labels, s >= getattr(model, "threshold", 0.5))
        out[source] = row
    return out


def choose_threshold(scores: np.ndarray, labels: np.ndarray, complete: np.ndarray, target_fpr: float,
                     floor: float = 0.5) -> tuple[float, dict]:
    """The lowest threshold >= `floor` whose out-of-fold FPR on complete sessions is <= target_fpr
    (the highest recall at that FPR); if none reaches it, the threshold with the lowest FPR."""
    normal = (labels == 0) & complete
    anomalous = (labels == 1) & complete
    counts = {"normal": int(normal.sum()), "anomalous": int(anomalous.sum())}
    if not normal.any():  # nothing to choose on (e.g. only cut logs): the floor, said as such
        return float(floor), {"target_fpr": target_fpr, "oof_fpr": None, "oof_recall": None, "met": False, **counts}
    best = None
    for t in np.round(np.arange(floor, 0.991, 0.01), 2):
        fpr = float((scores[normal] >= t).mean()) if normal.any() else 0.0
        recall = float((scores[anomalous] >= t).mean()) if anomalous.any() else 0.0
        if fpr <= target_fpr:
            return float(t), {"target_fpr": target_fpr, "oof_fpr": fpr, "oof_recall": recall, "met": True, **counts}
        if best is None or fpr < best[1]:
            best = (float(t), fpr, recall)
    return best[0], {"target_fpr": target_fpr, "oof_fpr": best[1], "oof_recall": best[2], "met": False, **counts}
