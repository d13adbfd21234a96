"""Shadow evaluation of a feedback-trained candidate against the serving artifact, before promotion.

Two parts, both stored in the candidate's meta.json under "shadow":
- **validation**: the project's grouped k-fold by distinct sequence, paired: on the same splits, the serving
  recipe (this trainer on the fold's training part as the data labels it) and the candidate recipe (the same
  part with the feedback folded in) judge the same held-out sessions against the data's labels, each at its
  shipped threshold (the serving artifact's, the candidate's). The serving artifact itself cannot be judged
  on these folds: it was fitted on all of them. This guards against feedback that costs detection on what the
  data says;
- **feedback set**: the serving artifact itself and the candidate judge every session the feedback labelled;
  how many of the analyst's labels each agrees with, and the sessions the serving artifact got wrong.
Promotion is refused when the candidate's F1 at HDFS_v1's prevalence on complete held-out sessions (worst
repeat) is below the serving recipe's by more than `tolerance`; `--force-promote` promotes anyway.
"""
from __future__ import annotations

import numpy as np

from logmesh.scorer import feedback_training as fbt
from logmesh.scorer import validation as val

# the session model (scikit-learn) loads in paired_grouped: `logmesh train --help` reads DEFAULT_TOLERANCE

DEFAULT_TOLERANCE = 0.01
LISTED = 20  # feedback-set sessions listed by name in the meta


def paired_grouped(blocks: val.Blocks, fset: fbt.FeedbackSet, applied: fbt.Applied, weight: int, serving_threshold: float,
                   candidate_threshold: float, folds: int, repeats: int, seed: int, progress=None) -> dict:
    from logmesh.scorer.session_model import SessionModel
    out: dict = {"serving_recipe": {"repeats": []}, "candidate": {"repeats": []}}
    for r in range(repeats):
        verdicts = {name: np.zeros(len(blocks), bool) for name in out}
        for k, (train_idx, test_idx) in enumerate(val.grouped_splits(blocks, folds, seed + r)):
            mask = np.zeros(len(blocks), bool)
            mask[train_idx] = True
            train, test = blocks.take(mask), blocks.take(~mask)
            with_feedback = fbt.apply(train, fset, weight, resolved=applied.resolved).blocks
            for name, part, threshold in (("serving_recipe", train, serving_threshold),
                                          ("candidate", with_feedback, candidate_threshold)):
                model = SessionModel(seed + r).fit(part.sessions, part.labels.tolist(), part.closed.tolist())
                verdicts[name][~mask] = np.asarray(model.probabilities(test.sessions, test.closed.tolist())) >= threshold
            if progress:
                progress(f"shadow: grouped k-fold, repeat {r + 1}/{repeats}, fold {k + 1}/{folds}")
        for name in out:
            out[name]["repeats"].append(val._parts(blocks, verdicts[name]))
    for name in out:
        out[name]["worst"] = val.worst(out[name]["repeats"])
    return out


def feedback_set(sessions, serving_model, candidate_model) -> dict:
    if not sessions:
        return {"sessions": 0}
    events = [list(e) for _f, e, _c, _a in sessions]
    closed = [c for _f, _e, c, _a in sessions]
    truth = np.asarray([a for *_x, a in sessions], bool)
    out = {"sessions": len(sessions), "analyst_anomalous": int(truth.sum())}
    listed = []
    for name, model in (("serving", serving_model), ("candidate", candidate_model)):
        judged = model.judge(events, closed)
        flagged = np.asarray([j.anomalous for j in judged], bool)
        out[name] = {"agrees": int((flagged == truth).sum()), "flags_analyst_normal": int((flagged & ~truth).sum()),
                     "misses_analyst_anomalous": int((~flagged & truth).sum())}
        for i, j in enumerate(judged[:LISTED]):
            if len(listed) <= i:
                listed.append({"feedback_id": sessions[i][0], "analyst": "anomalous" if truth[i] else "normal",
                               "events": len(events[i])})
            listed[i][name] = {"anomalous": j.anomalous, "score": round(float(j.score), 4), "kind": j.kind}
    out["listed"] = listed
    return out


def decide(validation: dict, tolerance: float) -> tuple[bool, str]:
    s = validation["serving_recipe"]["worst"].get("complete") or validation["serving_recipe"]["worst"]["all"]
    c = validation["candidate"]["worst"].get("complete") or validation["candidate"]["worst"]["all"]
    drop = s["f1_at_prevalence"] - c["f1_at_prevalence"]
    figures = (f"candidate F1 at 2.93% {c['f1_at_prevalence']:.4f} (recall {c['recall']:.4f}, FPR {c['fpr']:.3%}) vs "
               f"serving recipe {s['f1_at_prevalence']:.4f} (recall {s['recall']:.4f}, FPR {s['fpr']:.3%}) on "
               f"held-out complete sessions, worst repeat")
    if drop > tolerance:
        return False, f"{figures}: worse by {drop:.4f}, beyond the tolerance {tolerance}"
    return True, f"{figures}: within the tolerance {tolerance}" if drop > 0 else f"{figures}: not worse"


def compare(blocks: val.Blocks, fset: fbt.FeedbackSet, applied: fbt.Applied, weight: int, serving, candidate_model,
            folds: int, repeats: int, seed: int, tolerance: float, progress=None) -> dict:
    """The "shadow" section; `serving` is the serving artifact (None: nothing to compare, promote)."""
    if serving is None:
        return {"serving": None, "promote": True, "reason": "no serving artifact in the model dir: nothing to compare"}
    serving_model = serving.models["block"]
    validation = paired_grouped(blocks, fset, applied, weight, float(serving_model.threshold), float(candidate_model.threshold),
                                folds, repeats, seed, progress)
    promote, reason = decide(validation, tolerance)
    return {"serving": serving.meta.get("version"), "serving_threshold": float(serving_model.threshold),
            "serving_data_fingerprint": serving.meta.get("data", {}).get("fingerprint"),
            "protocol": f"paired grouped k-fold by distinct sequence ({folds} folds x {repeats}), truth = the data's "
                        "labels; serving recipe = this trainer without the feedback, candidate = with it; each at "
                        "its shipped threshold. Feedback set: the serving artifact itself and the candidate on every "
                        "session the feedback labelled, truth = the analyst's label",
            "tolerance": {"f1_at_prevalence_drop": tolerance},
            "validation": validation, "feedback_set": feedback_set(applied.sessions, serving_model, candidate_model),
            "promote": promote, "reason": reason}
