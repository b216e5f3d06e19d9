"""Evaluation metrics of the fine-tuned tasks, all as fractions in [0, 1] (perplexity excepted).

Classification (predictions and references are label ids):
- accuracy = mean(prediction == reference)
- f1 = 2 P R / (P + R) of class 1 when every label is 0 or 1, else the macro average of the per-class F1
  over the classes seen in either list (a class with P + R = 0 scores 0)
- matthews_correlation: scikit-learn's `matthews_corrcoef`
Regression: pearson / spearman correlation (scipy); 0 where a constant input leaves it undefined.
Language modelling: perplexity = exp(sum of token losses / number of tokens).
Generation (predictions and references are texts; a prediction may have several references), on
lowercased word tokens (runs of letters and digits; punctuation is dropped):
- bleu4: corpus BLEU-4 (Papineni et al. 2002). p_n = sum over sentences of clipped n-gram matches / sum of
  hypothesis n-grams, n = 1..4; BP = 1 if c > r else exp(1 - r / c), c = total hypothesis length,
  r = sum of the reference lengths closest to each hypothesis length (the shorter on a tie);
  BLEU = BP * exp(mean_n log p_n), 0 if any p_n is 0. With `smoothing=True`, p_n for n >= 2 becomes
  (matches + 1) / (n-grams + 1) (Lin and Och 2004).
- rouge1: unigram-overlap F1 per example, rougeL: F1 of the longest common subsequence per example
  (P = overlap / prediction length, R = overlap / reference length; best reference if several);
  both averaged over the examples.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

GREATER_IS_BETTER = {
    "accuracy": True,
    "f1": True,
    "matthews_correlation": True,
    "pearson": True,
    "spearman": True,
    "perplexity": False,
    "bleu4": True,
    "rouge1": True,
    "rougeL": True,
}
METRIC_NAMES = tuple(GREATER_IS_BETTER)
BLEU_MAX_ORDER = 4

_WORD = re.compile(r"[^\W_]+")


def greater_is_better(metric_name: str) -> bool:
    """Whether a larger value of the metric is better (False only for perplexity)."""
    if metric_name not in GREATER_IS_BETTER:
        raise ValueError(f"unknown metric {metric_name!r}; allowed: {', '.join(METRIC_NAMES)}")
    return GREATER_IS_BETTER[metric_name]


def _paired(predictions: Any, references: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    predictions = np.asarray(predictions).reshape(-1)
    references = np.asarray(references).reshape(-1)
    if predictions.size != references.size:
        raise ValueError(f"{what}: {predictions.size} predictions but {references.size} references; they must pair up")
    if predictions.size == 0:
        raise ValueError(f"{what}: no predictions to score")
    return predictions, references


def accuracy(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Share of predictions equal to their reference."""
    predictions, references = _paired(predictions, references, "accuracy")
    return float(np.mean(predictions == references))


def _f1_of_class(predictions: np.ndarray, references: np.ndarray, label: Any) -> float:
    true_positive = int(np.sum((predictions == label) & (references == label)))
    predicted = int(np.sum(predictions == label))
    actual = int(np.sum(references == label))
    if predicted + actual == 0:
        return 0.0
    return 2.0 * true_positive / (predicted + actual)


def f1(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """F1 of class 1 for labels in {0, 1}; macro-averaged F1 over the classes present otherwise."""
    predictions, references = _paired(predictions, references, "f1")
    labels = np.union1d(predictions, references)
    if set(labels.tolist()) <= {0, 1}:
        return _f1_of_class(predictions, references, 1)
    return float(np.mean([_f1_of_class(predictions, references, label) for label in labels]))


def matthews_correlation(predictions: Sequence[Any], references: Sequence[Any]) -> float:
    """Matthews correlation coefficient (scikit-learn; 0 when undefined)."""
    from sklearn.metrics import matthews_corrcoef

    predictions, references = _paired(predictions, references, "matthews_correlation")
    return float(matthews_corrcoef(references, predictions))


def _correlation(predictions: Any, references: Any, what: str) -> tuple[np.ndarray, np.ndarray] | None:
    predictions, references = _paired(predictions, references, what)
    predictions = predictions.astype(np.float64)
    references = references.astype(np.float64)
    if not (np.all(np.isfinite(predictions)) and np.all(np.isfinite(references))):
        raise ValueError(f"{what}: predictions and references must be finite numbers")
    if predictions.size < 2 or np.ptp(predictions) == 0.0 or np.ptp(references) == 0.0:
        return None
    return predictions, references


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation (scipy); 0 for fewer than two pairs or a constant input."""
    from scipy.stats import pearsonr

    pair = _correlation(predictions, references, "pearson")
    return 0.0 if pair is None else float(pearsonr(pair[0], pair[1])[0])


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman rank correlation (scipy); 0 for fewer than two pairs or a constant input."""
    from scipy.stats import spearmanr

    pair = _correlation(predictions, references, "spearman")
    return 0.0 if pair is None else float(spearmanr(pair[0], pair[1])[0])


def perplexity(total_loss_sum: float, total_tokens: int) -> float:
    """exp(total_loss_sum / total_tokens): the perplexity from summed token cross-entropies (nats).

    Raises:
        ValueError: total_tokens < 1, or a loss sum that is not a finite number.
    """
    if int(total_tokens) != total_tokens or total_tokens < 1:
        raise ValueError(f"perplexity needs total_tokens >= 1 (a whole number), got {total_tokens}")
    if not math.isfinite(total_loss_sum):
        raise ValueError(f"perplexity needs a finite loss sum, got {total_loss_sum}")
    mean_loss = total_loss_sum / total_tokens
    return math.exp(mean_loss) if mean_loss < 700.0 else math.inf


def word_tokens(text: str) -> list[str]:
    """Lowercased runs of letters and digits: the tokens BLEU and ROUGE are computed on."""
    if not isinstance(text, str):
        raise ValueError(f"generation metrics compare texts, got {type(text).__name__}")
    return _WORD.findall(text.lower())


def _reference_lists(predictions: Sequence[str], references: Sequence[Any], what: str) -> list[list[str]]:
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError(f"{what}: give lists of texts, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{what}: {len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError(f"{what}: no predictions to score")
    lists = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
    if any(len(options) == 0 for options in lists):
        raise ValueError(f"{what}: every prediction needs at least one reference")
    return lists


def _ngrams(tokens: list[str], order: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + order]) for i in range(len(tokens) - order + 1))


def bleu4(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *, smoothing: bool = False) -> float:
    """Corpus BLEU-4 in [0, 1] with brevity penalty and uniform weights (see the module docstring).

    Args:
        predictions: generated texts.
        references: one reference text per prediction, or a list of reference texts per prediction.
        smoothing: add one to the matches and n-gram counts of orders 2..4.
    """
    reference_lists = _reference_lists(predictions, references, "bleu4")
    matches = [0] * BLEU_MAX_ORDER
    totals = [0] * BLEU_MAX_ORDER
    hypothesis_length = 0
    reference_length = 0
    for prediction, options in zip(predictions, reference_lists, strict=True):
        hypothesis = word_tokens(prediction)
        candidates = [word_tokens(reference) for reference in options]
        hypothesis_length += len(hypothesis)
        reference_length += min((abs(len(c) - len(hypothesis)), len(c)) for c in candidates)[1]
        for order in range(1, BLEU_MAX_ORDER + 1):
            counts = _ngrams(hypothesis, order)
            best: Counter[tuple[str, ...]] = Counter()
            for candidate in candidates:
                best |= _ngrams(candidate, order)
            matches[order - 1] += sum(min(count, best[gram]) for gram, count in counts.items())
            totals[order - 1] += sum(counts.values())
    if hypothesis_length == 0 or matches[0] == 0:
        return 0.0
    log_precision = 0.0
    for order in range(1, BLEU_MAX_ORDER + 1):
        matched, total = matches[order - 1], totals[order - 1]
        if smoothing and order > 1:
            matched, total = matched + 1, total + 1
        if matched == 0:
            return 0.0
        log_precision += math.log(matched / total) / BLEU_MAX_ORDER
    brevity = 1.0 if hypothesis_length > reference_length else math.exp(1.0 - reference_length / hypothesis_length)
    return brevity * math.exp(log_precision)


def _f_measure(overlap: int, prediction_length: int, reference_length: int) -> float:
    if overlap == 0:
        return 0.0
    precision = overlap / prediction_length
    recall = overlap / reference_length
    return 2.0 * precision * recall / (precision + recall)


def _unigram_overlap(prediction: list[str], reference: list[str]) -> int:
    return sum((Counter(prediction) & Counter(reference)).values())


def _lcs_length(first: list[str], second: list[str]) -> int:
    previous = [0] * (len(second) + 1)
    for token in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _mean_rouge(
    predictions: Sequence[str],
    references: Sequence[Any],
    overlap: Callable[[list[str], list[str]], int],
    what: str,
) -> float:
    reference_lists = _reference_lists(predictions, references, what)
    scores = []
    for prediction, options in zip(predictions, reference_lists, strict=True):
        tokens = word_tokens(prediction)
        best = 0.0
        for reference in options:
            reference_tokens = word_tokens(reference)
            best = max(best, _f_measure(overlap(tokens, reference_tokens), len(tokens), len(reference_tokens)))
        scores.append(best)
    return float(np.mean(scores))


def rouge1(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean over examples of the unigram-overlap F1 (ROUGE-1 F-measure), best reference per example."""
    return _mean_rouge(predictions, references, _unigram_overlap, "rouge1")


def rougeL(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean over examples of the longest-common-subsequence F1 (ROUGE-L F-measure), best reference per example."""
    return _mean_rouge(predictions, references, _lcs_length, "rougeL")


_PAIRWISE: dict[str, Callable[[Any, Any], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
    "bleu4": bleu4,
    "rouge1": rouge1,
    "rougeL": rougeL,
}


def compute_metrics(
    metric_names: Sequence[str],
    predictions: Any,
    references: Any,
    *,
    loss_sum: float | None = None,
    num_tokens: int | None = None,
) -> dict[str, float]:
    """Compute each named metric.

    Args:
        metric_names: names from METRIC_NAMES.
        predictions, references: label ids (classification), numbers (regression) or texts (generation);
            unused (may be None) when only perplexity is asked for.
        loss_sum, num_tokens: summed token loss and token count, needed for "perplexity".
    Returns:
        {name: value} in the order asked.
    Raises:
        ValueError: an unknown metric name, perplexity without loss_sum/num_tokens, or unpaired inputs.
    """
    if isinstance(metric_names, str):
        metric_names = [metric_names]
    results: dict[str, float] = {}
    for name in metric_names:
        greater_is_better(name)
        if name == "perplexity":
            if loss_sum is None or num_tokens is None:
                raise ValueError("the perplexity metric needs loss_sum and num_tokens")
            results[name] = perplexity(loss_sum, num_tokens)
        else:
            if predictions is None or references is None:
                raise ValueError(f"the {name} metric needs predictions and references")
            results[name] = _PAIRWISE[name](predictions, references)
    return results
