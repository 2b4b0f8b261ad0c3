"""Human titles for the internal metric keys (dice_fg_mean -> "Dice (mean over
foreground classes)"), spelt once for tables, plots and pages."""
from __future__ import annotations

import math

_BASE = {"dice": "Dice", "hd95": "HD95 (mm)", "assd": "ASSD (mm)", "missed": "cases missed"}
FIXED = {"dice_fg_mean": "Dice (mean over foreground classes)", "cases": "cases",
         "gain_dice_fg_mean": "ΔDice (mean over foreground classes)"}
SHORT = {"dice_fg_mean": "Dice fg", "gain_dice_fg_mean": "ΔDice fg"}


def metric_title(key: str, labels: dict, short: bool = False) -> str:
    """``dice_2`` -> "Dice: lesion", ``delta_hd95_1`` -> "ΔHD95 (mm): organ", ...;
    ``short`` gives the compact form for terminal tables."""
    if short and key in SHORT:
        return SHORT[key]
    if key in FIXED:
        return FIXED[key]
    delta = key.startswith(("gain_", "delta_"))
    base = key.split("_", 1)[1] if delta else key
    name, _, cls = base.rpartition("_")
    if name not in _BASE:
        return key
    title = _BASE[name]
    if short:
        title = title.replace(" (mm)", "").replace("cases missed", "missed")
    return f"{'Δ' if delta else ''}{title}{' ' if short else ': '}{labels.get(cls, cls)}"


def fmt(v, nd: int = 3) -> str:
    """A table cell: n/a for a missing or NaN value, ints as ints."""
    from .reading import num
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    x = num(v)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    if float(x).is_integer() and nd == 0:
        return str(int(x))
    return f"{x:.{nd}f}"


def signed(v, nd: int) -> str:
    from .reading import num
    x = num(v)
    return "n/a" if not math.isfinite(x) else f"{x:+.{nd}f}"
