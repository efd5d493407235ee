"""Accuracy and agreement figures from logits (numpy only, unit-tested)."""
from __future__ import annotations

import numpy as np


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest logits per row, best first (ties broken by lower index)."""
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def labelled_scores(logits: np.ndarray, labels: np.ndarray) -> dict:
    top5 = topk(logits, 5)
    return {"labelled_top1": int((top5[:, 0] == labels).sum()),
            "labelled_top5": int((top5 == labels[:, None]).any(axis=1).sum()),
            "labelled_count": int(len(labels))}


def agreement(logits: np.ndarray, reference: np.ndarray) -> dict:
    """How closely `logits` follow `reference` (Keras) on the same inputs."""
    top1 = topk(logits, 1)[:, 0]
    ref_top1 = topk(reference, 1)[:, 0]
    ref_top5 = topk(reference, 5)
    diff = np.abs(logits - reference)
    n = len(logits)
    agree = int((top1 == ref_top1).sum())
    contained = int((ref_top5 == top1[:, None]).any(axis=1).sum())
    return {"agreement_top1": agree / n, "agreement_top1_count": agree,
            "top1_in_reference_top5": contained / n, "evaluation_count": n,
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean())}
