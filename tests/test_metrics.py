import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from helpers import metrics


def counts_of(pred, truth):
    return metrics.confusion(torch.tensor(pred, dtype=torch.bool)[None], torch.tensor(truth, dtype=torch.bool)[None])


def test_confusion_counts_worked_by_hand():
    pred = [[1, 1, 0], [0, 1, 0]]
    truth = [[1, 0, 0], [1, 1, 0]]
    # TP: (0,0),(1,1) = 2; FP: (0,1) = 1; FN: (1,0) = 1; TN: (0,2),(1,2) = 2
    assert counts_of(pred, truth).tolist() == [[2, 1, 1, 2]]


def test_metrics_of_hand_counts():
    c = torch.tensor([[2, 1, 1, 2]])
    m = metrics.all_metrics(c, "macro")
    assert m["jaccard"] == pytest.approx(2 / 4)
    assert m["dice"] == pytest.approx(4 / 6)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["threshold_jaccard"] == 0.0  # 0.5 < 0.65


def test_empty_truth_and_prediction_score_one():
    c = counts_of([[0, 0], [0, 0]], [[0, 0], [0, 0]])
    m = metrics.all_metrics(c, "macro")
    assert m == {"accuracy": 1.0, "sensitivity": 1.0, "specificity": 1.0, "jaccard": 1.0,
                 "threshold_jaccard": 1.0, "dice": 1.0}


def test_empty_truth_with_false_positives_scores_zero_jaccard():
    c = counts_of([[1, 0], [0, 0]], [[0, 0], [0, 0]])
    assert metrics.jaccard(c).item() == 0.0
    assert metrics.dice(c).item() == 0.0
    assert metrics.sensitivity(c).item() == 1.0  # no positives: the scorer's freebie
    assert metrics.specificity(c).item() == pytest.approx(3 / 4)


def test_all_lesion_truth_specificity_freebie():
    c = counts_of([[1, 1]], [[1, 1]])
    assert metrics.specificity(c).item() == 1.0
    assert metrics.jaccard(c).item() == 1.0


def test_threshold_jaccard_keeps_values_at_or_above_065():
    c = torch.tensor([[65, 35, 0, 0], [64, 36, 0, 0]])
    assert metrics.threshold_jaccard(c).tolist() == [pytest.approx(0.65), 0.0]


def test_macro_and_micro_differ_as_defined():
    c = torch.tensor([[1, 0, 0, 9], [0, 1, 9, 0]])  # image 1 perfect, image 2 all wrong
    assert metrics.jaccard(c, "macro").item() == pytest.approx(0.5)
    assert metrics.jaccard(c, "micro").item() == pytest.approx(1 / 11)
    assert metrics.jaccard(c, "per_image").tolist() == [1.0, 0.0]


def test_binarize_conventions():
    assert metrics.binarize_uint8(torch.tensor([0, 127, 128, 129, 255])).tolist() == [False, False, False, True, True]
    assert metrics.binarize_logits(torch.tensor([-0.1, 0.0, 0.1])).tolist() == [False, True, True]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion(torch.zeros(1, 2, 2, dtype=torch.bool), torch.zeros(1, 3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="N x 4"):
        metrics.jaccard(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="reduction"):
        metrics.dice(torch.zeros(1, 4, dtype=torch.int64), "mean")


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p_truth=st.floats(0, 1), p_pred=st.floats(0, 1))
def test_dice_equals_2j_over_1_plus_j_per_image(seed, p_truth, p_pred):
    rng = np.random.default_rng(seed)
    truth = torch.from_numpy(rng.random((4, 9, 7)) < p_truth)
    pred = torch.from_numpy(rng.random((4, 9, 7)) < p_pred)
    c = metrics.confusion(pred, truth)
    assert c.sum(1).tolist() == [63] * 4
    j = metrics.jaccard(c)
    d = metrics.dice(c)
    assert torch.allclose(d, 2 * j / (1 + j), atol=1e-12)
    # and against a direct set computation
    for i in range(4):
        inter = (pred[i] & truth[i]).sum().item()
        union = (pred[i] | truth[i]).sum().item()
        expected = 1.0 if union == 0 else inter / union
        assert math.isclose(j[i].item(), expected, abs_tol=1e-12)
