"""Seeded splits and samples: each random choice is a prefix of a permutation from `default_rng([seed, purpose])`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# Seeds of the independent random streams: numpy.random.default_rng([seed, purpose]).
_SPLIT_STREAM, _TRAIN_CAP_STREAM, _VALIDATION_CAP_STREAM, _CALIBRATION_STREAM, _CALIBRATION_BLOCK_STREAM = 0, 1, 2, 3, 4
_TEST_STREAM, _TEST_CAP_STREAM = 5, 6
# The test split's seed is fixed, not the run's: every seed and method of a comparison scores the same held-out
# rows, and no choice made on validation (epoch, learning rate, seeds) ever sees them.
TEST_SEED = 0
# The carved test split takes at most this share of the rows, so small data keeps most of itself for training.
MAX_TEST_SHARE = 0.2


def _permutation_prefix(size: int, count: int, seed: int, stream: int) -> np.ndarray:
    """The first `count` entries of a seeded permutation of range(size), sorted."""
    order = np.random.default_rng([seed, stream]).permutation(size)
    return np.sort(order[:count])


def _carve_validation(size: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if size < 2:
        raise ValueError(f"carving a validation set needs at least 2 training examples, got {size}")
    count = min(size - 1, max(1, round(size * fraction)))
    validation = _permutation_prefix(size, count, seed, _SPLIT_STREAM)
    train = np.setdiff1d(np.arange(size), validation)
    return train, validation


def _cap(frame: pd.DataFrame, limit: int | None, seed: int, stream: int) -> pd.DataFrame:
    if limit is None or len(frame) <= limit:
        return frame
    return frame.iloc[_permutation_prefix(len(frame), limit, seed, stream)].reset_index(drop=True)


def _carve_test(keys: Sequence[str], limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices: a fixed random set of at most min(limit, share * rows) rows.

    Rows with the same text (`keys`) go together, so a text never sits in both train and test: groups are
    visited in a seeded random order (`TEST_SEED`) and each whole group that still fits is taken.
    """
    size = len(keys)
    count = min(limit, int(size * MAX_TEST_SHARE))
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    members = list(groups.values())
    chosen: list[int] = []
    for group in np.random.default_rng([TEST_SEED, _TEST_STREAM]).permutation(len(members)):
        if len(chosen) == count:
            break
        if len(chosen) + len(members[group]) <= count:
            chosen.extend(members[group])
    test = np.sort(np.asarray(chosen, dtype=np.int64))
    return np.setdiff1d(np.arange(size), test), test
