"""Dictionary transforms: image and label Volumes stay in step.

A transform is called as ``t(data, rng)`` where ``data`` maps keys
("image", "label", ...) to Volumes and ``rng`` is a numpy Generator. Random
transforms draw only from ``rng``, so a seeded Compose is reproducible in any
process. A transform may return a list of dicts (patch samplers); Compose maps
the remaining transforms over each item.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

Data = dict[str, Any]

# Default interpolation per key: images trilinear, labels nearest neighbour.
DEFAULT_KEYS = ("image", "label")


def is_label_key(key: str) -> bool:
    return key == "label" or key.endswith("_label") or key.startswith("label")


class Transform:
    """Base class; subclasses implement ``__call__(data, rng)``."""

    keys: tuple[str, ...] = DEFAULT_KEYS

    def present(self, data: Data) -> list[str]:
        """The keys of this transform that the item actually has (labels are optional)."""
        return [k for k in self.keys if k in data and data[k] is not None]

    def __call__(self, data: Data, rng: np.random.Generator | None = None):  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in fields.items())})"


class RandomTransform(Transform):
    """A transform applied with probability ``prob``."""

    prob: float = 1.0

    def __call__(self, data: Data, rng: np.random.Generator | None = None):
        rng = rng if rng is not None else np.random.default_rng()
        if self.prob < 1.0 and rng.random() >= self.prob:
            return data
        return self.apply(data, rng)

    def apply(self, data: Data, rng: np.random.Generator):  # pragma: no cover
        raise NotImplementedError


class Compose(Transform):
    """Run transforms in order; lists (from patch samplers) fan out."""

    def __init__(self, transforms: Sequence[Callable], seed: int | None = None):
        self.transforms = list(transforms)
        self._rng = np.random.default_rng(seed)

    def set_seed(self, seed: int) -> "Compose":
        self._rng = np.random.default_rng(seed)
        return self

    def __call__(self, data, rng: np.random.Generator | None = None):
        rng = rng if rng is not None else self._rng
        items = data
        for t in self.transforms:
            if isinstance(items, list):
                out = []
                for it in items:
                    r = t(it, rng)
                    out.extend(r if isinstance(r, list) else [r])
                items = out
            else:
                items = t(items, rng)
        return items

    def deterministic_prefix(self) -> "Compose":
        """The leading transforms that draw no randomness (what a cache may store)."""
        head = []
        for t in self.transforms:
            if isinstance(t, RandomTransform) or getattr(t, "random", False):
                break
            head.append(t)
        return Compose(head)

    def config(self) -> list[str]:
        """A stable description used in cache keys."""
        return [repr(t) for t in self.transforms]
