"""Seeded splits and samples: each random choice is a prefix of a permutation from `default_rng([seed, purpose])`."""

from __future__ import annotations

import numpy as np
import pandas as pd

# Seeds of the independent random streams: numpy.random.default_rng([seed, purpose]).
_SPLIT_STREAM, _TRAIN_CAP_STREAM, _VALIDATION_CAP_STREAM, _CALIBRATION_STREAM, _CALIBRATION_BLOCK_STREAM = 0, 1, 2, 3, 4


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
