"""Task metrics against hand-computed values and independent implementations (scikit-learn, numpy,
sacrebleu, rouge-score)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from senslora.finetune.evaluation.task_metrics import (
    accuracy,
    bleu4,
    compute_metrics,
    f1,
    greater_is_better,
    matthews_correlation,
    pearson,
    perplexity,
    rouge1,
    rougeL,
    spearman,
    word_tokens,
)

# ---------------------------------------------------------------- classification and regression


def test_accuracy_and_f1_agree_with_scikit_learn_on_random_labels():
    rng = np.random.default_rng(0)
    for num_classes in (2, 3, 5):
        for _ in range(5):
            predictions = rng.integers(0, num_classes, size=57)
            references = rng.integers(0, num_classes, size=57)
            average = "binary" if num_classes == 2 else "macro"
            assert accuracy(predictions, references) == pytest.approx(accuracy_score(references, predictions))
            assert f1(predictions, references) == pytest.approx(f1_score(references, predictions, average=average))


def test_f1_binary_by_hand():
    # class 1: TP = 2 (positions 0, 3), predicted 1 three times, actual 1 four times -> F1 = 2*2 / (3 + 4)
    predictions = [1, 1, 0, 1, 0, 0]
    references = [1, 0, 1, 1, 1, 0]
    assert f1(predictions, references) == pytest.approx(4 / 7)
    assert accuracy(predictions, references) == pytest.approx(3 / 6)


def test_f1_macro_counts_a_class_never_predicted_as_zero():
    # classes 0, 1, 2; class 2 is never predicted: F1(2) = 0. F1(0) = 2*1/(2+1), F1(1) = 2*1/(1+2)
    predictions = [0, 0, 1]
    references = [0, 2, 1]
    assert f1(predictions, references) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)


def test_matthews_correlation_matches_the_confusion_matrix_formula():
    rng = np.random.default_rng(1)
    predictions = rng.integers(0, 2, size=101)
    references = rng.integers(0, 2, size=101)
    tp = np.sum((predictions == 1) & (references == 1))
    tn = np.sum((predictions == 0) & (references == 0))
    fp = np.sum((predictions == 1) & (references == 0))
    fn = np.sum((predictions == 0) & (references == 1))
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_correlation(predictions, references) == pytest.approx(expected)


def test_pearson_and_spearman_agree_with_numpy():
    rng = np.random.default_rng(2)
    references = rng.normal(size=40)
    predictions = 0.7 * references + rng.normal(size=40)
    assert pearson(predictions, references) == pytest.approx(np.corrcoef(predictions, references)[0, 1])
    ranks_p = np.argsort(np.argsort(predictions))
    ranks_r = np.argsort(np.argsort(references))
    assert spearman(predictions, references) == pytest.approx(np.corrcoef(ranks_p, ranks_r)[0, 1])


def test_correlation_of_a_constant_prediction_is_zero():
    assert pearson([1.0, 1.0, 1.0], [0.1, 0.5, 0.9]) == 0.0
    assert spearman([1.0, 1.0, 1.0], [0.1, 0.5, 0.9]) == 0.0


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    vocabulary, tokens = 7, 13
    logits = torch.zeros(tokens, vocabulary)
    targets = torch.arange(tokens) % vocabulary
    loss_sum = torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    assert perplexity(loss_sum, tokens) == pytest.approx(7.0)
    assert perplexity(2.0 * 10, 10) == pytest.approx(math.exp(2.0))
    assert compute_metrics(["perplexity"], None, None, loss_sum=loss_sum, num_tokens=tokens) == {
        "perplexity": pytest.approx(7.0)
    }


# ---------------------------------------------------------------- generation: hand-computed values


def test_word_tokens_lowercase_and_drop_punctuation():
    assert word_tokens("The quick, brown FOX-jumps! 42") == ["the", "quick", "brown", "fox", "jumps", "42"]


def test_bleu4_single_sentence_by_hand():
    # hypothesis: the quick brown fox jumps (5 tokens); reference: the quick brown fox leaps high (6 tokens)
    # p1 = 4/5 (the quick brown fox), p2 = 3/4, p3 = 2/3, p4 = 1/2 (the quick brown fox)
    # BP = exp(1 - 6/5) since c = 5 <= r = 6
    expected = math.exp(1 - 6 / 5) * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert bleu4(["The quick, brown fox jumps!"], ["the quick brown fox leaps high"]) == pytest.approx(expected)
    assert expected == pytest.approx(0.54752, abs=1e-5)


def test_bleu4_is_a_corpus_statistic_not_a_mean_of_sentences():
    # sentence 1 as above; sentence 2 matches exactly (4 tokens): p_n adds its 4, 3, 2, 1 matches.
    # p1 = 8/9, p2 = 6/7, p3 = 4/5, p4 = 2/3; c = 9, r = 10
    expected = math.exp(1 - 10 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    predictions = ["the quick brown fox jumps", "we all like tea"]
    references = ["the quick brown fox leaps high", "we all like tea"]
    assert bleu4(predictions, references) == pytest.approx(expected)


def test_bleu4_clips_counts_and_add_one_smoothing():
    # hypothesis "the the the the", reference "the cat": unigram matches clipped to 1 -> p1 = 1/4,
    # no bigram, trigram or 4-gram match -> unsmoothed BLEU is 0.
    assert bleu4(["the the the the"], ["the cat"]) == 0.0
    # add-one on n >= 2: p2 = (0+1)/(3+1), p3 = (0+1)/(2+1), p4 = (0+1)/(1+1); BP = 1 (c = 4 > r = 2)
    expected = (1 / 4 * 1 / 4 * 1 / 3 * 1 / 2) ** 0.25
    assert bleu4(["the the the the"], ["the cat"], smoothing=True) == pytest.approx(expected)


def test_bleu4_multiple_references_take_the_closest_length_and_max_counts():
    # references of 3 and 7 tokens around a 5-token hypothesis: a tie, the shorter (3) is r -> BP = 1.
    # clipping uses the max count over references: "a" twice in reference 2 -> both hypothesis "a" match.
    # unigrams: a a b c d; ref1 "a b c", ref2 "a a x y z w v": matches a:2, b:1, c:1 -> 4/5
    # bigrams: (a a) ref2, (a b) ref1, (b c) ref1, (c d) none -> 3/4; trigrams: (a a b) no, (a b c) ref1,
    # (b c d) no -> 1/3; 4-grams: none of 2 -> 0 -> BLEU 0 unsmoothed; smoothed p4 = 1/3
    prediction = ["a a b c d"]
    references = [["a b c", "a a x y z w v"]]
    assert bleu4(prediction, references) == 0.0
    expected = (4 / 5 * (3 + 1) / (4 + 1) * (1 + 1) / (3 + 1) * (0 + 1) / (2 + 1)) ** 0.25
    assert bleu4(prediction, references, smoothing=True) == pytest.approx(expected)


def test_bleu4_of_an_empty_prediction_is_zero():
    assert bleu4([""], ["some reference"]) == 0.0


def test_rouge_by_hand():
    # example 1: the cat sat on the mat / the cat was on the mat: unigram overlap the x2, cat, on, mat = 5
    # of 6 and 6 -> ROUGE-1 F = 5/6; LCS = the cat on the mat = 5 -> ROUGE-L F = 5/6.
    # example 2: a b c d e / a c e b: unigram overlap 4 -> P = 4/5, R = 4/4 -> F = 8/9;
    # LCS = a c e = 3 -> P = 3/5, R = 3/4 -> F = 2 * (9/20) / (27/20) = 2/3
    predictions = ["the cat sat on the mat", "a b c d e"]
    references = ["The cat was on the mat.", "a c e b"]
    assert rouge1(predictions, references) == pytest.approx((5 / 6 + 8 / 9) / 2)
    assert rougeL(predictions, references) == pytest.approx((5 / 6 + 2 / 3) / 2)


def test_rouge_takes_the_best_reference_and_scores_empty_text_zero():
    assert rouge1(["a b"], [["x y", "a b"]]) == pytest.approx(1.0)
    assert rougeL(["", "a"], ["a", ""]) == 0.0


# ---------------------------------------------------------------- generation: independent libraries


def _random_sentences(rng: np.random.Generator, count: int) -> list[str]:
    vocabulary = ["the", "cat", "dog", "sat", "on", "mat", "a", "ran"]
    return [" ".join(rng.choice(vocabulary, size=rng.integers(1, 12))) for _ in range(count)]


def test_bleu4_agrees_with_sacrebleu():
    import sacrebleu

    rng = np.random.default_rng(3)
    for _ in range(10):
        predictions = _random_sentences(rng, 8)
        first = _random_sentences(rng, 8)
        second = _random_sentences(rng, 8)
        references = [[a, b] for a, b in zip(first, second, strict=True)]
        for smoothing, method in ((False, "none"), (True, "add-k")):
            reference_score = sacrebleu.corpus_bleu(
                predictions, [first, second], tokenize="none", smooth_method=method, smooth_value=1
            ).score
            assert bleu4(predictions, references, smoothing=smoothing) * 100 == pytest.approx(reference_score)


def test_rouge_agrees_with_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    rng = np.random.default_rng(4)
    predictions = _random_sentences(rng, 30)
    references = _random_sentences(rng, 30)
    pairs = zip(predictions, references, strict=True)
    scores = [scorer.score(reference, prediction) for prediction, reference in pairs]
    assert rouge1(predictions, references) == pytest.approx(np.mean([s["rouge1"].fmeasure for s in scores]))
    assert rougeL(predictions, references) == pytest.approx(np.mean([s["rougeL"].fmeasure for s in scores]))


# ---------------------------------------------------------------- compute_metrics and bad input


def test_compute_metrics_returns_each_name_in_order():
    results = compute_metrics(["matthews_correlation", "accuracy"], [1, 0, 1, 1], [1, 0, 0, 1])
    assert list(results) == ["matthews_correlation", "accuracy"]
    assert results["accuracy"] == pytest.approx(0.75)
    assert greater_is_better("perplexity") is False and greater_is_better("rougeL") is True


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: compute_metrics(["bleu"], ["a"], ["a"]), "unknown metric 'bleu'"),
        (lambda: compute_metrics(["perplexity"], None, None), "needs loss_sum and num_tokens"),
        (lambda: accuracy([1, 0], [1]), "2 predictions but 1 references"),
        (lambda: accuracy([], []), "no predictions"),
        (lambda: perplexity(3.0, 0), "total_tokens >= 1"),
        (lambda: perplexity(float("nan"), 4), "finite loss sum"),
        (lambda: bleu4("a b", "a b"), "lists of texts"),
        (lambda: rouge1(["a"], [[]]), "at least one reference"),
        (lambda: pearson([1.0, float("inf")], [1.0, 2.0]), "finite numbers"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
