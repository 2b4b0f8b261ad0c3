"""The site's side of secure aggregation (the protocol: fl_common.secagg).
No torch import anywhere in this package."""
from .site import MaskedUpdate, PreparedMask, SiteSecAgg

__all__ = ["MaskedUpdate", "PreparedMask", "SiteSecAgg"]
