"""The threshold rule both sides enforce (no crypto import: the package
imports this eagerly, and fl_common.crypto imports the package's errors)."""
from __future__ import annotations

from .errors import ProtocolError

# A lone curious site next to a lying server is the likeliest collusion (e.g. a
# site run by the coordinator's own institution), so that is what a federation
# declares unless it says otherwise ([federation] colluding_sites).
DEFAULT_COLLUDING_SITES = 1


def min_threshold(num_enrolled: int, colluding_sites: int) -> int:
    """Smallest allowed threshold for ``num_enrolled`` sites of which up to
    ``colluding_sites`` may collude with the server: 2t > n + n_C (Bonawitz et
    al. 2017). A server that claims a live site dropped needs t shares of its
    self-mask seed and t of its mask key; an honest site gives at most one of
    the two and a colluder both, so 2t > n + n_C makes that impossible.
    At least 2 (a threshold of 1 hands any single site every secret)."""
    n, c = int(num_enrolled), int(colluding_sites)
    if c < 0:
        raise ProtocolError(f"colluding_sites must be >= 0, got {c}")
    t = max(2, (n + c) // 2 + 1)
    if n >= 2 and t > n:
        raise ProtocolError(f"no threshold protects {n} sites against {c} colluding sites "
                            f"(2t > n + n_C needs t = {t} > {n}): declare fewer colluders "
                            "or enrol more sites")
    return t


def two_site_warning(num_sites: int) -> str | None:
    """What an operator must be told about a 2-site federation, else None."""
    if num_sites == 2:
        return ("a 2-site federation: each site learns the other's update from the "
                "aggregate (sum minus its own); secure aggregation hides it only from "
                "the server")
    return None
