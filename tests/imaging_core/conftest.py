"""Fixtures shared by the imaging tests."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest


@dataclass
class _Arr:
    array: np.ndarray
    spacing: tuple = (2.0, 2.0, 3.0)


class _Case:
    """What evaluation reads from a cached case: image, label, spacing, id."""

    def __init__(self, rng, case_id):
        self.case_id = case_id
        img = rng.normal(0, 1, (1, 20, 18, 16)).astype(np.float32)
        img[0, 5:12, 4:10, 3:9] += 3.0
        lab = np.zeros((1, 20, 18, 16), np.uint8)
        lab[0, 5:12, 4:10, 3:9] = 1
        lab[0, 14:17, 12:15, 10:13] = 2
        self._item = {"image": _Arr(img), "label": _Arr(lab)}

    def load(self, mmap=True):
        return self._item


@pytest.fixture(scope="module")
def two_cases():
    """Two small in-memory cases with an organ (1) and a lesion (2)."""
    rng = np.random.default_rng(0)
    return [_Case(rng, f"c{i}") for i in range(2)]
