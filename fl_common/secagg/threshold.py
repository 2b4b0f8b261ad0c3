"""The threshold rule both sides enforce (no crypto import: the package
imports this eagerly, and fl_common.crypto imports the package's errors)."""
from __future__ import annotations


def min_threshold(num_enrolled: int) -> int:
    """Smallest allowed threshold: more than half the enrolled sites, and 2.
    Then two disjoint groups of t sites cannot exist, so a server cannot get a
    site's self-mask seed from one group and its mask key from another."""
    return max(2, num_enrolled // 2 + 1)
