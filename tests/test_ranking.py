"""One accuracy rule: `trainer test` and `fusion report` rank classes the same way, ties included."""
import numpy as np

from plumbing.ranking import label_ranks, predictions, topk_accuracy, view_mean


def test_ties_rank_the_lower_class_index_first():
    scores = np.array([[1.0, 1.0, 0.0], [0.5, 2.0, 2.0]])
    assert label_ranks(scores, np.array([1, 2])).tolist() == [1, 1]  # each label tied with a lower index
    assert label_ranks(scores, np.array([0, 1])).tolist() == [0, 0]
    assert predictions(scores).tolist() == [0, 1]


def test_trainer_and_fusion_agree_on_a_tied_score_file():
    """Classes 0 and 1 tie after a float32 mean: torch.topk (the old `trainer test` rule) put class 1 first,
    `fusion report` class 0. Now both use the one rule: the float64 mean breaks the near-tie, an exact tie
    goes to the lower index."""
    from fusion.aggregate import aggregate
    from fusion.metrics import topk_accuracy as fusion_topk
    from trainer.evaluation import accuracy

    exact = np.zeros((1, 2, 1, 6), dtype=np.float32)  # (V, F, K, C)
    exact[0, :, 0, 0] = exact[0, :, 0, 1] = [1e8, 0.0]
    assert accuracy(exact, [0]) == (100.0, 100.0)
    assert fusion_topk(aggregate(exact, "mean-logits"), np.array([0]), 1) == 1.0
    near = exact.copy()
    near[0, :, 0, 1] = [1e8, 3.0]  # in float32, 1e8 + 3 == 1e8: a tie; in float64, class 1 is ahead
    assert accuracy(near, [1])[0] == 100.0 and accuracy(near, [0])[0] == 0.0
    assert fusion_topk(aggregate(near, "mean-logits"), np.array([1]), 1) == 1.0


def test_the_video_score_is_a_float64_mean_of_the_views():
    logits = np.array([[[[1e8, 0.0]], [[1.0, 0.0]]]], dtype=np.float32)  # (1, 2, 1, 2)
    mean = view_mean(logits)
    assert mean.dtype == np.float64 and mean.shape == (1, 2)
    assert mean[0, 0] == (np.float64(np.float32(1e8)) + 1.0) / 2
    assert topk_accuracy(mean, np.array([0]), 1) == 1.0


def test_ranked_orders_classes_best_first_ties_to_the_lower_index():
    from plumbing.ranking import ranked

    assert ranked(np.array([0.5, 2.0, 2.0, -1.0])).tolist() == [1, 2, 0, 3]
