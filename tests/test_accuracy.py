"""Accuracy/agreement arithmetic."""
from __future__ import annotations

import numpy as np

from pipeline.accuracy import agreement, labelled_scores, topk


def test_topk_orders_best_first():
    logits = np.array([[0.1, 0.9, 0.5], [3.0, 1.0, 2.0]])
    np.testing.assert_array_equal(topk(logits, 2), [[1, 2], [0, 2]])


def test_labelled_scores_count_top1_and_top5():
    logits = np.tile(np.arange(10.0), (3, 1))  # class 9 best, then 8, 7, ...
    scores = labelled_scores(logits, np.array([9, 5, 0]))
    assert scores == {"labelled_top1": 1, "labelled_top5": 2, "labelled_count": 3}


def test_agreement_against_reference():
    ref = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    out = np.array([[0.0, 1.0, 2.5], [0.0, 1.0, 2.0]])
    a = agreement(out, ref)
    assert a["agreement_top1_count"] == 1 and a["agreement_top1"] == 0.5
    assert a["max_abs_logit_diff"] == 2.0
    assert a["evaluation_count"] == 2
