"""Pure fusion maths against hand-computed cases: metrics, views -> video, stream fusion, weight search."""
import math

import numpy as np
import pytest

from fusion import combine, metrics
from fusion.aggregate import aggregate, softmax, video_probabilities
from fusion.errors import FusionError

# 3 videos, 2 classes.
#   video 0: [0.9, 0.1], label 0 -> predicted 0, right
#   video 1: [0.4, 0.6], label 0 -> predicted 1, wrong
#   video 2: [0.5, 0.5], label 1 -> tie, first index wins -> predicted 0, wrong
SCORES = np.array([[0.9, 0.1], [0.4, 0.6], [0.5, 0.5]])
LABELS = np.array([0, 0, 1])


def test_top1_uses_first_index_on_ties():
    assert metrics.predictions(SCORES).tolist() == [0, 1, 0]
    assert metrics.topk_accuracy(SCORES, LABELS, 1) == pytest.approx(1 / 3)


def test_top5_with_two_classes_is_top2():
    # Only 2 classes: top-5 means top-2, so every video counts.
    assert metrics.topk_accuracy(SCORES, LABELS, 5) == 1.0


def test_topk_tie_rule_ranks_lower_index_first():
    scores = np.array([[1.0, 2.0, 2.0, 0.0]] * 2)
    # label 1: nothing higher, no equal score at a lower index -> rank 0
    # label 2: nothing higher, class 1 ties at a lower index -> rank 1 (top-2 but not top-1)
    assert metrics.label_ranks(scores, np.array([1, 2])).tolist() == [0, 1]
    assert metrics.topk_correct(scores, np.array([1, 2]), 1).tolist() == [True, False]
    assert metrics.topk_correct(scores, np.array([1, 2]), 2).tolist() == [True, True]


def test_topk_matches_sorting_on_random_scores():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(50, 7))
    labels = rng.integers(0, 7, 50)
    top3 = np.argsort(-scores, axis=1)[:, :3]
    expected = np.mean([labels[i] in top3[i] for i in range(50)])
    assert metrics.topk_accuracy(scores, labels, 3) == pytest.approx(expected)


def test_confusion_per_class_and_mean_class_accuracy():
    preds = metrics.predictions(SCORES)
    # rows = true class: class 0 -> predicted 0 once, 1 once; class 1 -> predicted 0 once
    assert metrics.confusion_matrix(LABELS, preds, 2).tolist() == [[1, 1], [1, 0]]
    # class 0: 1/2 right, class 1: 0/1 right -> mean class accuracy 0.25 (top-1 is 1/3)
    assert metrics.per_class_accuracy(LABELS, preds, 2).tolist() == [0.5, 0.0]
    assert metrics.mean_class_accuracy(LABELS, preds, 2) == pytest.approx(0.25)


def test_mean_class_accuracy_ignores_classes_without_videos():
    labels = np.array([0, 0, 2])
    preds = np.array([0, 1, 2])
    acc = metrics.per_class_accuracy(labels, preds, 3)
    assert acc[0] == 0.5 and math.isnan(acc[1]) and acc[2] == 1.0
    # mean over classes 0 and 2 only: (0.5 + 1) / 2
    assert metrics.mean_class_accuracy(labels, preds, 3) == pytest.approx(0.75)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    correct = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=bool)
    idx = metrics.bootstrap_indices(len(correct), 500, seed=7)
    lo, hi = metrics.bootstrap_interval(correct, idx)
    assert 0.0 <= lo < 0.7 < hi <= 1.0
    again = metrics.bootstrap_interval(correct, metrics.bootstrap_indices(len(correct), 500, seed=7))
    assert again == (lo, hi)
    assert metrics.bootstrap_interval(np.ones(10, bool), idx) == (1.0, 1.0)


def test_aggregation_methods():
    # 1 video, 2 frames x 1 crop, 2 classes: views [0, 0] and [2, 0]
    logits = np.array([[[[0.0, 0.0]], [[2.0, 0.0]]]])
    assert aggregate(logits, "mean-logits").tolist() == [[1.0, 0.0]]
    assert aggregate(logits, "max").tolist() == [[2.0, 0.0]]
    # softmax([0, 0]) = [.5, .5]; softmax([2, 0]) = [e^2, 1] / (e^2 + 1) = [0.880797, 0.119203]
    p = (0.5 + math.exp(2) / (math.exp(2) + 1)) / 2
    assert aggregate(logits, "mean-softmax") == pytest.approx(np.array([[p, 1 - p]]))


def test_mean_softmax_and_mean_logits_can_disagree():
    # views [3, 0], [0, 1], [0, 1]: mean logits [1, 0.667] -> class 0;
    # mean softmax class 0 = (0.9526 + 2 * 0.2689) / 3 = 0.4968 -> class 1
    logits = np.array([[[[3.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.0]]]])
    assert metrics.predictions(aggregate(logits, "mean-logits")).tolist() == [0]
    assert metrics.predictions(aggregate(logits, "mean-softmax")).tolist() == [1]
    assert aggregate(logits, "mean-softmax")[0, 0] == pytest.approx(0.4968, abs=1e-4)


def test_aggregation_rejects_unknown_method_and_bad_shape():
    with pytest.raises(FusionError, match="unknown aggregation"):
        aggregate(np.zeros((1, 1, 1, 2)), "median")
    with pytest.raises(FusionError, match="frames, crops"):
        aggregate(np.zeros((1, 2)), "mean-logits")


def test_video_probabilities():
    assert video_probabilities(np.array([[0.3, 0.7]]), "mean-softmax").tolist() == [[0.3, 0.7]]
    assert video_probabilities(np.array([[0.0, 0.0]]), "mean-logits").tolist() == [[0.5, 0.5]]
    assert softmax(np.array([[1000.0, 1000.0]])).tolist() == [[0.5, 0.5]]  # no overflow


# Two streams, 3 videos, 2 classes, labels [0, 1, 0]:
S = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # spatial video scores
T = np.array([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0]])  # temporal video scores
Y = np.array([0, 1, 0])


def test_average_and_max():
    # average [[1, .5], [0, 2], [.5, 1]] -> [0, 1, 1]: 2/3
    assert combine.average([S, T]).tolist() == [[1.0, 0.5], [0.0, 2.0], [0.5, 1.0]]
    # max [[2, 1], [0, 3], [1, 2]] -> [0, 1, 1]
    assert combine.maximum([S, T]).tolist() == [[2.0, 1.0], [0.0, 3.0], [1.0, 2.0]]
    assert metrics.topk_accuracy(combine.average([S, T]), Y) == pytest.approx(2 / 3)


def test_weighted():
    # 3:1 -> (3S + T) / 4 = [[1.5, .25], [0, 1.5], [.75, .5]] -> [0, 1, 0]: all right
    fused = combine.weighted([S, T], [3, 1])
    assert fused == pytest.approx(np.array([[1.5, 0.25], [0.0, 1.5], [0.75, 0.5]]))
    assert metrics.topk_accuracy(fused, Y) == 1.0
    # 1:3 -> [[.5, .75], [0, 2.5], [.25, 1.5]] -> [1, 1, 1]: 1/3
    assert metrics.topk_accuracy(combine.weighted([S, T], [1, 3]), Y) == pytest.approx(1 / 3)


@pytest.mark.parametrize("weights", [[1], [1, 2, 3], [-1, 2], [0, 0], [float("nan"), 1]])
def test_weighted_rejects_bad_weights(weights):
    with pytest.raises(FusionError):
        combine.weighted([S, T], weights)


def test_margin():
    # two classes: softmax margin of logits [a, b] is tanh(|a - b| / 2)
    probs = softmax(S, axis=1)
    assert combine.margin(probs) == pytest.approx([math.tanh(1), math.tanh(0.5), math.tanh(0.5)])
    assert combine.margin(np.array([[0.2, 0.5, 0.3]])) == pytest.approx([0.2])


def test_confidence_fusion():
    # margins: S [tanh 1, tanh .5, tanh .5] = [.7616, .4621, .4621]; T [tanh .5, tanh 1.5, tanh 1]
    #        = [.4621, .9051, .7616]
    # video 0: w_S = .7616 / 1.2237 = .6224 -> [1.2448, .3776] -> class 0 (right)
    # video 2: w_S = .4621 / 1.2237 = .3776 -> [.3776, 1.2448] -> class 1 (wrong)
    probs = [softmax(S, axis=1), softmax(T, axis=1)]
    fused, w = combine.confidence([S, T], probs)
    a, b = math.tanh(1), math.tanh(0.5)
    assert w[0, 0] == pytest.approx(a / (a + b), abs=1e-5)
    assert w.sum(axis=1) == pytest.approx([1, 1, 1])
    assert fused[0] == pytest.approx([2 * a / (a + b), b / (a + b)], abs=1e-5)
    assert fused[2] == pytest.approx([b / (a + b), 2 * a / (a + b)], abs=1e-5)
    assert metrics.predictions(fused).tolist() == [0, 1, 1]


def test_confidence_with_zero_margins_is_the_average():
    flat = np.zeros((1, 2))
    fused, w = combine.confidence([flat, flat + 1], [softmax(flat), softmax(flat)])
    assert w.tolist() == [[0.5, 0.5]] and fused.tolist() == [[0.5, 0.5]]


def test_weight_grid():
    assert combine.weight_grid(2, 4).tolist() == [[0, 1], [.25, .75], [.5, .5], [.75, .25], [1, 0]]
    g = combine.weight_grid(3, 2)
    assert len(g) == 6 and np.allclose(g.sum(axis=1), 1)
    assert len(combine.weight_grid(2)) == 21


def test_search_weights_picks_best_then_closest_to_equal():
    # video 0 right iff 2w > 1 - w (w > 1/3); video 1 always right; video 2 right iff w > 2(1 - w) (w > 2/3).
    # So every w >= 0.70 reaches top-1 1.0; the one closest to (0.5, 0.5) is 0.70.
    w, table = combine.search_weights([S, T], Y)
    assert w == pytest.approx([0.7, 0.3])
    assert len(table) == 21
    by_w = {round(r["weights"][0], 2): r["top1"] for r in table}
    assert by_w[0.65] == pytest.approx(2 / 3) and by_w[0.7] == 1.0 and by_w[1.0] == 1.0


def test_search_weights_tie_breaks_to_first_row_of_mirror_pair():
    same = np.array([[1.0, 0.0]])
    w, _ = combine.search_weights([same, same], np.array([0]), combine.weight_grid(2, 4))
    assert w.tolist() == [0.5, 0.5]
    w, _ = combine.search_weights([same, same], np.array([0]), np.array([[0.25, 0.75], [0.75, 0.25]]))
    assert w.tolist() == [0.25, 0.75]
