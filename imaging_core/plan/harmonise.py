"""The harmonisation check before round 1: one table with every site's summary
row (from its fingerprint) and the flags that say where sites disagree, what
that will do to training and how to fix it. ``strict`` refuses to start.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, Mapping

from ..errors import ImagingError

SPACING_SPREAD = 3.0     # site median spacings further apart than this factor
MIN_CASES = 5            # fewer labelled cases than this at a site
CT_AIR_CEILING = -500.0  # a CT in HU has air near -1000: its 0.5th percentile lies below this
CT_MEDIAN_SPREAD = 150.0  # HU between a site's foreground median and the federation's
MR_SCALE_SPREAD = 5.0    # factor between a site's 99.5th percentile and the federation's


@dataclass(frozen=True)
class Flag:
    name: str
    sites: list[str]
    detail: str
    effect: str
    fix: str

    def line(self) -> str:
        return f"[{self.name}] {', '.join(self.sites)}: {self.detail}. Effect: {self.effect}. Fix: {self.fix}."


class HarmonisationRefused(ImagingError):
    def __init__(self, flags: list[Flag]):
        super().__init__(None, f"harmonisation check failed under --strict: {len(flags)} flag(s): "
                               + "; ".join(f"{f.name} ({', '.join(f.sites)})" for f in flags))
        self.flags = flags


COLUMNS = ("site", "modality", "cases", "skipped", "spacing", "orientation", "background",
           "min", "p0.5", "p99.5", "fg p50", "labels")


def _fmt(v: Any, column: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):   # spacing as 1x1x2.5, label values as 0,1,2
        return "x".join(_fmt(x) for x in v) if column == "spacing" else ",".join(map(str, v))
    return str(v)


def table_rows(summaries: Mapping[str, Mapping]) -> list[dict[str, Any]]:
    rows = []
    for site, s in summaries.items():
        rows.append({"site": site, "modality": s.get("modality"), "cases": s.get("cases"),
                     "skipped": s.get("skipped"), "spacing": s.get("spacing"),
                     "orientation": "/".join(s.get("orientations") or []) or s.get("orientation"),
                     "background": s.get("background"), "min": s.get("min_value"),
                     "p0.5": (s.get("whole") or {}).get("0.5"), "p99.5": (s.get("whole") or {}).get("99.5"),
                     "fg p50": (s.get("foreground") or {}).get("50.0"), "labels": s.get("label_values")})
    return rows


def render(rows: list[dict[str, Any]], flags: list[Flag]) -> str:
    cells = [[_fmt(r[c], c) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    out = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    out += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
    out.append(f"{len(flags)} flag(s)" + (":" if flags else ": sites agree"))
    out += [f.line() for f in flags]
    return "\n".join(out)


def _by_modality(summaries: Mapping[str, Mapping]) -> dict[str, dict[str, Mapping]]:
    out: dict[str, dict[str, Mapping]] = {}
    for site, s in summaries.items():
        out.setdefault(str(s.get("modality")), {})[site] = s
    return out


def flags_for(summaries: Mapping[str, Mapping]) -> list[Flag]:
    flags: list[Flag] = []
    # labels: values present and their names
    sets = {s: tuple(v.get("label_values") or []) for s, v in summaries.items()}
    common = max(set(sets.values()), key=lambda k: sum(1 for x in sets.values() if x == k), default=())
    odd = sorted(s for s, v in sets.items() if v != common)
    if odd:
        flags.append(Flag("label_values_differ", odd,
                          "label values " + "; ".join(f"{s} {list(sets[s])}" for s in odd)
                          + f" vs {list(common)} at the others",
                          "the model learns a class from some sites only and its loss treats the missing "
                          "classes there as background", "map every site's labels onto one label set "
                          "(dataset.json 'labels' and the label files) before training"))
    names = {s: tuple(sorted((v.get("label_names") or {}).items())) for s, v in summaries.items()}
    common_n = max(set(names.values()), key=lambda k: sum(1 for x in names.values() if x == k), default=())
    odd = sorted(s for s, v in names.items() if v != common_n)
    if odd:
        flags.append(Flag("label_meanings_differ", odd, "label names " + "; ".join(
            f"{s} {dict(names[s])}" for s in odd), "one label value means different structures at "
            "different sites: the federated model averages conflicting targets",
            "agree on one label table and relabel the sites that differ"))
    # spacing spread per axis
    sp = {s: v.get("spacing") for s, v in summaries.items() if v.get("spacing") and None not in v["spacing"]}
    for ax in range(3):
        vals = {s: v[ax] for s, v in sp.items()}
        if vals and max(vals.values()) > SPACING_SPREAD * min(vals.values()):
            ref = median(vals.values())
            # the sites far from the federation's median; with two sites both ends
            odd = sorted(s for s, v in vals.items() if max(v / ref, ref / v) > SPACING_SPREAD ** 0.5) \
                or sorted({min(vals, key=vals.get), max(vals, key=vals.get)})
            flags.append(Flag("spacing_spread", odd,
                              f"axis {ax} median spacing " + ", ".join(f"{s} {vals[s]:g} mm" for s in odd)
                              + f" vs {ref:g} mm across sites (range > {SPACING_SPREAD:g}x)",
                              "resampling to one spacing interpolates the coarse "
                              "site heavily: blurred labels and thin structures lost there",
                              "check the plan's target spacing suits every site; consider excluding or "
                              "re-acquiring the outlier"))
    # orientation mix
    orients = {s: v.get("orientations") or [v.get("orientation")] for s, v in summaries.items()}
    allo = sorted({o for v in orients.values() for o in v if o})
    if len(allo) > 1:
        major = max(allo, key=lambda o: sum(o in v for v in orients.values()))
        # a site that names no orientation (all below the small-count threshold) is not odd
        odd = sorted(s for s, v in orients.items() if any(v) and v != [major])
        flags.append(Flag("orientation_mix", odd, f"orientations {allo} (most sites {major})",
                          "none if every site reorients to [preprocess].orientation (fedvox does); a "
                          "wrong header flips anatomy silently", "check each flagged site's headers "
                          "(an overlay of image and label in a viewer)"))
    for mod, group in _by_modality(summaries).items():
        conv = {s: v.get("background") for s, v in group.items()}
        # CT has an absolute scale: its window clips any air fill to one value
        if mod.upper() != "CT" and len(set(conv.values())) > 1:
            odd = sorted(s for s, c in conv.items() if c == "zero-filled") or sorted(conv)
            flags.append(Flag("background_differs", odd, f"{mod} background: " + ", ".join(
                f"{s} {c}" for s, c in sorted(conv.items())),
                "a normalisation over non-zero voxels leaves a zero-filled background at the tissue "
                "mean: the model labels the background of such a site (issue 16: Dice 0.03)",
                "normalise with whole-head statistics (the plan's MR rule) or fill every site's "
                "background the same way"))
        if mod.upper() == "CT":
            for s, v in sorted(group.items()):
                p05 = (v.get("whole") or {}).get("0.5")
                mn = v.get("min_value")
                if (p05 is not None and p05 > CT_AIR_CEILING) or (mn is not None and mn >= 0):
                    flags.append(Flag("ct_not_hu", [s], f"CT minimum {mn}, 0.5th percentile {p05} "
                                      "(air should be near -1000 HU)", "a HU window/clip maps this site's "
                                      "tissue to the wrong range: the model sees another contrast",
                                      "apply RescaleSlope/RescaleIntercept when exporting (or read the "
                                      "DICOM series directly) so values are Hounsfield units"))
            med = {s: (v.get("foreground") or {}).get("50.0") for s, v in group.items()}
            med = {s: m for s, m in med.items() if m is not None}
            if len(med) > 1:
                ref = median(med.values())
                odd = sorted(s for s, m in med.items() if abs(m - ref) > CT_MEDIAN_SPREAD)
                if odd:
                    flags.append(Flag("intensity_inconsistent", odd, "CT foreground median " + ", ".join(
                        f"{s} {med[s]:.0f}" for s in odd) + f" HU vs {ref:.0f} across sites",
                        "the same structure has another intensity at these sites: the model's "
                        "intensity cues do not transfer", "check the calibration (HU) and the label "
                        "definitions of the flagged sites"))
        else:
            hi = {s: (v.get("whole") or {}).get("99.5") for s, v in group.items()}
            hi = {s: h for s, h in hi.items() if h}
            if len(hi) > 1:
                ref = median(hi.values())
                odd = sorted(s for s, h in hi.items() if max(h / ref, ref / h) > MR_SCALE_SPREAD)
                if odd:
                    flags.append(Flag("intensity_inconsistent", odd, f"{mod} 99.5th percentile " + ", ".join(
                        f"{s} {hi[s]:.4g}" for s in odd) + f" vs {ref:.4g} across sites",
                        "per-image z-score absorbs a scale but not a different contrast or bias field",
                        "check the sequence and the export of the flagged sites"))
    # a site whose policy keeps its case counts sends only the two booleans (hide_counts)
    few = sorted(s for s, v in summaries.items()
                 if v.get("few_cases") or (isinstance(v.get("cases"), int) and v["cases"] < MIN_CASES))
    if few:
        flags.append(Flag("too_few_cases", few, ", ".join(f"{s} {_fmt(summaries[s].get('cases'))}" for s in few)
                          + f" labelled cases (< {MIN_CASES})", "these sites' local epochs overfit a "
                          "handful of cases and their validation metrics are noise",
                          "add cases, or let them join for evaluation only"))
    skipped = sorted(s for s, v in summaries.items() if v.get("skipped") or v.get("any_skipped"))
    if skipped:
        flags.append(Flag("cases_skipped", skipped, ", ".join(f"{s} {_fmt(summaries[s].get('skipped'))}"
                                                              for s in skipped)
                          + " case(s) could not be read", "they are left out of training and of the plan",
                          "read the reason per case in the site's fingerprint (skipped) and fix the files"))
    return flags


def hide_counts(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary row of a site that keeps its case counts (its [policy]): the
    counts replaced by the two facts the check needs."""
    out = dict(summary)
    out.update(cases=None, skipped=None, few_cases=bool(summary["cases"] < MIN_CASES),
               any_skipped=bool(summary["skipped"]))
    return out


def check(summaries: Mapping[str, Mapping], strict: bool = False) -> dict[str, Any]:
    """{"rows", "flags", "text"}; under ``strict`` any flag raises HarmonisationRefused."""
    rows, flags = table_rows(summaries), flags_for(summaries)
    if strict and flags:
        raise HarmonisationRefused(flags)
    return {"rows": rows, "flags": [asdict(f) for f in flags], "text": render(rows, flags)}


def report_blocks(result: Mapping[str, Any]) -> list[tuple]:
    """The table and flags as report blocks (fl_server.report.writer's format)."""
    flags = [Flag(**f) for f in result.get("flags", [])]
    out: list[tuple] = [("h", 2, "Harmonisation check (before round 1)"),
                        ("table", list(COLUMNS), [[_fmt(r.get(c), c) for c in COLUMNS]
                                                         for r in result.get("rows", [])])]
    out += [("p", f.line()) for f in flags] or [("p", "No flags: the sites agree.")]
    return out
