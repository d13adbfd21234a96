"""Pictures of an evaluation (`logmesh evaluate --plot DIR`): for logmesh and the baselines judged in the same
run, the confusion matrix at each model's threshold, the precision-recall curve of its scores with the
operating point marked, and the score histograms of normal and anomalous sessions (HDFS: blocks; BGL: one set
for lines and one for windows, their files prefixed lines_ and windows_).

matplotlib is imported here only (the `plots` extra), with the Agg backend: files, no display.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FILES = ("confusion_matrix.png", "precision_recall.png", "score_histogram.png")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'logmesh[plots]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def write(out_dir: Path, truth, models: dict[str, dict], title: str, prefix: str = "",
          unit: str = "sessions") -> list[Path]:
    """`models`: name -> {"scores": [n] in [0, 1], "predicted": [n] bool, "threshold": float}; `truth`: [n] bool.
    Returns the PNG paths written in `out_dir` (created), each FILES name after `prefix`; `unit` names what was
    judged (the histograms' axis)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = np.asarray(truth, bool)
    names = list(models)
    paths = [out_dir / f"{prefix}{f}" for f in FILES]

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        p = np.asarray(models[name]["predicted"], bool)
        m = np.asarray([[int((~truth & ~p).sum()), int((~truth & p).sum())],
                        [int((truth & ~p).sum()), int((truth & p).sum())]])
        ax.imshow(np.log1p(m), cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:,}", ha="center", va="center", color="black" if v < m.max() / 2 else "white")
        ax.set_xticks([0, 1], ["normal", "anomaly"])
        ax.set_yticks([0, 1], ["normal", "anomaly"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("truth")
        ax.set_title(f"{name} (threshold {models[name]['threshold']:.2f})", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name in names:
        s = np.asarray(models[name]["scores"], float)
        p = np.asarray(models[name]["predicted"], bool)
        if truth.any() and (~truth).any():
            precision, recall, _ = precision_recall_curve(truth, s)
            line, = ax.step(recall, precision, where="post",
                            label=f"{name} (AP {average_precision_score(truth, s):.3f})")
            tp = (truth & p).sum()
            ax.plot([tp / truth.sum()], [tp / p.sum() if p.any() else 1.0], "o", color=line.get_color())
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"precision-recall (dots: at each model's threshold)\n{title}", fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    bins = np.linspace(0, 1, 41)
    for ax, name in zip(axes[0], names):
        s = np.asarray(models[name]["scores"], float)
        ax.hist(s[~truth], bins=bins, alpha=0.6, label=f"normal ({(~truth).sum():,})", color="tab:blue")
        ax.hist(s[truth], bins=bins, alpha=0.6, label=f"anomalous ({truth.sum():,})", color="tab:red")
        ax.axvline(models[name]["threshold"], color="black", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("score")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(f"{unit} (log)")
    fig.suptitle(f"score histograms (dashed: threshold) {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
    return paths
