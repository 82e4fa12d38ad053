"""metrics: accuracy, precision, recall and F1 from a confusion matrix, worked by hand; the printed table."""
import numpy as np
import pytest

from trainer import metrics


def test_binary_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    predictions = np.array([0, 1, 0, 1, 1, 0, 1])
    m = metrics.classification_metrics(metrics.confusion_of(labels, predictions, 2), ["negative", "positive"], 3.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 3]] and m["loss"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(0.75) and m["per_class"]["negative"]["f1"] == pytest.approx(2 / 3)


def test_two_classes_report_the_class_named_positive_wherever_it_is():
    # rows true, columns predicted; positive is class 0 here: precision 6/9, recall 6/8, F1 12/17
    m = metrics.classification_metrics(np.array([[6, 2], [3, 9]]), ["positive", "negative"])
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(12 / 17) and m["accuracy"] == pytest.approx(15 / 20)
    assert m["per_class"]["negative"]["f1"] == pytest.approx(18 / 23)       # precision 9/11, recall 9/12
    assert m["macro_f1"] == pytest.approx((12 / 17 + 18 / 23) / 2) and "loss" not in m


def test_three_classes_use_macro_averages_and_an_empty_class_scores_zero():
    m = metrics.classification_metrics(np.array([[2, 1, 0], [1, 3, 0], [0, 0, 0]]),
                                       ["negative", "neutral", "positive"])
    assert m["per_class"]["positive"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["neutral"]["f1"] == pytest.approx(3 / 4)          # precision 3/4, recall 3/4
    assert m["recall"] == pytest.approx((2 / 3 + 3 / 4 + 0) / 3) and m["f1"] == m["macro_f1"]
    assert m["examples"] == 7 and m["accuracy"] == pytest.approx(5 / 7)


def test_confusion_of_counts_each_pair():
    confusion = metrics.confusion_of(np.array([0, 1, 2, 2, 2]), np.array([0, 2, 2, 2, 1]), 3)
    np.testing.assert_array_equal(confusion, [[1, 0, 0], [0, 0, 1], [0, 1, 2]])


def test_format_table():
    m = metrics.classification_metrics(np.array([[2, 1], [1, 3]]), ["negative", "positive"])
    lines = metrics.format_table(m).splitlines()
    assert lines[0] == "accuracy 0.7143   precision 0.7500   recall 0.7500   f1 0.7500   (7 examples)"
    assert lines[2].split() == ["negative", "0.6667", "0.6667", "0.6667", "3"]
    assert [line.split() for line in lines[-2:]] == [["negative", "2", "1"], ["positive", "1", "3"]]
