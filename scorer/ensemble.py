"""The line-level ensemble: five members vote on a line's shape (DESIGN.md).

A line's verdict answers "is this the line to read?": does it carry failure evidence, i.e. is its
kind of line one that no complete normal session holds (an exception, a timeout, a failed delete)?
HDFS labels blocks, not lines, and most lines of a failing block are ordinary, so a line is not
labelled by its block: `evidence_labels` marks each distinct shape by its template with the session
model's rule: evidence when no complete normal session holds the template (scorer/normal_profile.py)
and its text names a fault or is unknown to the model (scorer/failure_text.py). A "Deleting block" line
is normal even though a cut log shows it only in failing blocks (normal deletes come hours after the
cut). The members learn to carry that judgement to shapes and templates they never saw, from the text
(four TF-IDF members) and the SBERT embedding (one); each votes anomaly at >= 0.5 and the majority wins.

For HDFS the rule also bounds what the members may extrapolate (`ruled_out`, from `no_fault_templates`):
a line of a loghub template whose text names no fault is never an evidence line, whatever its words
resemble (an analyst's template label overrides it, as it overrides the training labels). E15
("Changing block file offset") and E19 ("Reopen Block") are in no training line, and one member gave
"Reopen Block" 0.92 (probe, 2026-12-02): the session rule calls a session holding them unfamiliar, so
its lines must not reach users as anomalous. Lines no loghub template matches (Drain3 ids, "unknown")
are left to the members and to the new-template path (scorer/new_templates.py): novel evidence.
"""
from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import SGDClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.tree import DecisionTreeClassifier

from logmesh.ingest.templates import EVENT_IDS, match_template
from logmesh.scorer.failure_text import failure_event

THRESHOLD = 0.5
_TOKENS = r"[A-Za-z$<>_.*]+"  # words and placeholders; digits were masked away already


def _tfidf() -> TfidfVectorizer:
    return TfidfVectorizer(token_pattern=_TOKENS, ngram_range=(1, 2), lowercase=False, sublinear_tf=True)


def build_members(seed: int = 0) -> dict[str, tuple[str, Pipeline | SGDClassifier]]:
    """name -> (input kind "text" or "embedding", unfitted estimator)."""
    return {
        "tfidf_sgd": ("text", make_pipeline(_tfidf(), SGDClassifier(loss="log_loss", alpha=1e-5, random_state=seed))),
        "random_forest": ("text", make_pipeline(_tfidf(), RandomForestClassifier(
            n_estimators=50, min_samples_leaf=1, n_jobs=1, random_state=seed))),
        # a few dozen distinct shapes: L-BFGS converges where Adam's 40 epochs did not
        "mlp": ("text", make_pipeline(_tfidf(), MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs",
                                                               max_iter=2000, random_state=seed))),
        "decision_tree": ("text", make_pipeline(_tfidf(), DecisionTreeClassifier(min_samples_leaf=1, random_state=seed))),
        # Training sees a few dozen distinct (shape, label) rows with large weights: plain SGD stops after
        # a handful of noisy steps and calibrates badly, so run it to convergence and average the iterates.
        "embedding_sgd": ("embedding", SGDClassifier(loss="log_loss", alpha=1e-4, max_iter=5000, tol=None,
                                                     average=True, random_state=seed)),
    }


class LineEnsemble:
    """Fitted members; `probabilities` gives one column of P(anomaly) per member."""

    def __init__(self, seed: int = 0, ruled_out: frozenset[str] = frozenset()) -> None:
        self.members = build_members(seed)
        # HDFS: template ids whose lines get P = 0 from every member (module docstring); empty for BGL
        self.ruled_out = frozenset(ruled_out)

    @property
    def names(self) -> list[str]:
        return list(self.members)

    def fit(self, shapes: list[str], embeddings: np.ndarray, labels: np.ndarray,
            weights: np.ndarray | None = None) -> "LineEnsemble":
        """`weights[i]`: how many lines row i stands for (training on distinct (shape, label) rows)."""
        for kind, estimator in self.members.values():
            params = {}
            if weights is not None:
                last = estimator.steps[-1][0] if isinstance(estimator, Pipeline) else None
                params = {f"{last}__sample_weight" if last else "sample_weight": np.asarray(weights, np.float64)}
            estimator.fit(shapes if kind == "text" else embeddings, labels, **params)
        return self

    def probabilities(self, shapes: list[str], embeddings: np.ndarray) -> np.ndarray:
        """(n, members) matrix of P(anomaly)."""
        columns = [estimator.predict_proba(shapes if kind == "text" else embeddings)[:, 1]
                   for kind, estimator in self.members.values()]
        out = np.column_stack(columns).astype(np.float32)
        ruled_out = getattr(self, "ruled_out", frozenset())  # artifacts from before the rule lack it
        if ruled_out and len(shapes):
            out[[match_template(s) in ruled_out for s in shapes]] = 0.0
        return out


def anomaly_votes(probabilities: np.ndarray) -> np.ndarray:
    """How many members vote anomaly (P >= THRESHOLD): one count for a row of member probabilities, one per row
    of an (n, members) matrix."""
    return (np.asarray(probabilities) >= THRESHOLD).sum(axis=-1)


def majority(probabilities: np.ndarray) -> np.ndarray:
    """The ensemble's vote, the one rule the trainer, the scorer and the evaluation apply: anomaly when more than
    half the members vote anomaly (3 of 5). A bool for a row, a bool array for a matrix."""
    probabilities = np.asarray(probabilities)
    return anomaly_votes(probabilities) * 2 > probabilities.shape[-1]


def combine(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: majority verdict (bool), mean score, and anomaly vote count."""
    return majority(probabilities), probabilities.mean(axis=1), anomaly_votes(probabilities)


def no_fault_templates(evidence: set[str] = frozenset()) -> frozenset[str]:
    """The loghub HDFS templates whose text names no fault (never an evidence line), less `evidence`
    (templates an analyst labelled anomalous)."""
    return frozenset(e for e in EVENT_IDS if not failure_event(e)) - set(evidence)


def evidence_labels(templates: list[str], normal_events: set[str]) -> np.ndarray:
    """1 for a shape that carries evidence by the session model's rule: its template is in no complete
    normal session and names a fault, or is unknown to the model ("unknown", a Drain3 id)."""
    return np.asarray([int(t not in normal_events and failure_event(t)) for t in templates])
