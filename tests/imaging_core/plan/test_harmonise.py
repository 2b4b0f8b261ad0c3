import pytest

from imaging_core.plan.fingerprint import fingerprint_site
from imaging_core.plan.harmonise import HarmonisationRefused, check


def _summaries(site_writer, specs):
    return {name: fingerprint_site(site_writer(name, **kw), kw.get("modality", "MR")).summary
            for name, kw in specs.items()}


def _flagged(result):
    return {f["name"]: f["sites"] for f in result["flags"]}


def test_each_odd_site_is_flagged_by_name(site_writer):
    base = dict(n=5, shape=(24, 20, 16), spacing=(1.0, 1.0, 1.0))
    s = _summaries(site_writer, {
        "ok1": base, "ok2": {**base, "seed": 1}, "ok3": {**base, "seed": 2},
        "zero": {**base, "background": "zero"},
        "lps": {**base, "axcodes": "LPS"},
        "coarse": {**base, "spacing": (1.0, 1.0, 4.0)},
        "labels": {**base, "labels": (1, 2)},
        "ct1": {**base, "modality": "CT"}, "ct2": {**base, "modality": "CT", "seed": 4}, "ct_raw": {**base, "modality": "CT", "hu": False},
    })
    res = check(s)
    flags = _flagged(res)
    assert "zero" in flags["background_differs"]
    assert "lps" in flags["orientation_mix"]
    assert "coarse" in flags["spacing_spread"]
    assert flags["label_values_differ"] == ["labels"]
    assert flags["ct_not_hu"] == ["ct_raw"]
    # the sites nothing is wrong with are named by no flag except the mix they are part of
    named = {x for names in flags.values() for x in names}
    assert not {"ok1", "ok2", "ok3", "ct1", "ct2"} & named
    for f in res["flags"]:
        assert f["effect"] and f["fix"]
    assert "ct_raw" in res["text"] and "[ct_not_hu]" in res["text"]
    with pytest.raises(HarmonisationRefused, match="ct_not_hu"):
        check(s, strict=True)


def test_agreeing_sites_pass_strict(site_writer):
    base = dict(n=5)
    s = _summaries(site_writer, {"a": base, "b": {**base, "seed": 3}})
    res = check(s, strict=True)
    assert res["flags"] == [] and "sites agree" in res["text"]


def test_few_and_skipped_cases(site_writer):
    dl = site_writer("small", n=3)
    (dl.parent / "img" / "c0.nii.gz").write_bytes(b"broken")
    s = {"small": fingerprint_site(dl, "MR").summary}
    flags = _flagged(check(s))
    assert flags["too_few_cases"] == ["small"] and flags["cases_skipped"] == ["small"]
