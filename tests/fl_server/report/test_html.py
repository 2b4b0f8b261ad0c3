"""report.html: one self-contained page holding every figure, readable titles,
the cross-site heatmap when the run records a cross-site matrix, overlays on the
original grid with orientation labels."""
from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np

from fl_server.records import write_json


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.external, self.headers, self.text = [], [], [], []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a)
        for k in ("src", "href"):
            if k in a and not str(a[k]).startswith(("data:", "#")):
                self.external.append((tag, a[k]))
        if tag in ("script", "link"):
            self.external.append((tag, a))
        self._in_th = tag == "th"

    def handle_endtag(self, tag):
        self._in_th = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_th:
            self.headers.append(data)


def _matrix(fab) -> list[dict]:
    """A cross-site matrix in the run record's format: global + each site's local model on
    every site; hospital_c did not consent, so its local model is on its own site only."""
    rows = []
    for model in ["global (final)"] + [f"local-only {s}" for s in fab.SITES]:
        for j, es in enumerate(["held-out"] + fab.SITES):
            if model == "local-only hospital_c" and es != "hospital_c":
                continue
            rows.append({"model": model, "eval_set": es, "cases": 4, "dice_1": 0.5 + 0.1 * j,
                         "hd95_1": 8.0, "missed_1": 0, "dice_2": 0.3, "hd95_2": 12.0, "missed_2": j % 2})
    return rows


def _lps_case():
    """A case stored in LPS order (as DICOM-derived NIfTIs are), 2 x 1 x 3 mm voxels, with the
    organ in the patient's right-anterior-superior corner."""
    shape = (20, 16, 10)
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    gt = np.zeros(shape, np.uint8)
    gt[1:6, 1:5, 6:9] = 1  # low i = right (L->R flipped), low j = anterior, high k = superior
    affine = np.diag([-2.0, -1.0, 3.0, 1.0])
    return {"name": "lps", "image": img, "gt": gt, "pred": gt, "affine": affine, "title": "LPS case"}


def test_html_self_contained_with_every_figure(run_dir, tmp_path, fab):
    from fl_server.report import make_report
    write_json(run_dir / "cross_site.json", {"rows": _matrix(fab), "consent": {"hospital_a": True,
                                                                                "hospital_b": True,
                                                                                "hospital_c": False}})
    out = make_report(run_dir, [fab.baseline(tmp_path / "pooled")], overlays=[_lps_case()], quiet=True)
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert page.external == []  # opens offline: nothing fetched
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "cross_site.png" in pngs and "overlay_lps.png" in pngs
    # every PNG of the directory is inlined, byte for byte, and nothing else
    inlined = sorted(base64.b64decode(i["src"].split(",", 1)[1]) for i in page.imgs)
    assert inlined == sorted((out / p).read_bytes() for p in pngs)
    assert sorted(i["alt"] for i in page.imgs) == pngs
    # readable titles, no internal keys
    text = " ".join(page.text)
    assert "dice_fg_mean" not in text and "hd95_2" not in text
    assert "Dice (mean over foreground classes)" in page.headers and "HD95 (mm): lesion" in page.headers
    assert "Cross-site evaluation" in text and "evaluated on" in page.headers
    assert "hospital_a, hospital_b shared their local-only model" in text
    assert "hospital_c did not: their local-only model was evaluated on their own data only" in text
    figs = json.loads((out / "figures.json").read_text())
    heat = figs["cross_site.png"]["axes"]
    assert [a["title"] for a in heat[:2]] == ["Dice: organ", "Dice: lesion"]


def test_no_heatmap_without_cross_site_matrix(run_dir):
    from fl_server.report import make_report
    out = make_report(run_dir, quiet=True)
    assert not (out / "cross_site.png").exists()
    assert "Cross-site" not in (out / "report.html").read_text()


def test_overlay_orientation_from_affine():
    """The LPS case is shown in RAS order with its own voxel sizes: the organ lands at
    the viewer's left (patient's right) and top (anterior) of the axial view."""
    from fl_server.report.overlay import VIEWS, _view2d, representative_slices, scale_bar_mm, to_ras
    c = _lps_case()
    (img, gt), spacing, codes = to_ras((c["image"], c["gt"]), c["affine"])
    assert codes == "LPS" and spacing == (2.0, 1.0, 3.0) and img.shape == c["image"].shape
    assert np.array_equal(np.sort(img.ravel()), np.sort(c["image"].ravel()))  # same voxels, no resampling
    name, keep, left, right, top, bottom = VIEWS[0]
    assert (name, left, top) == ("axial", "R", "A")
    iz = representative_slices(gt)[2]
    ax = _view2d(gt, keep, iz)  # rows bottom->top (origin lower), columns left->right on screen
    rows, cols = np.nonzero(ax)
    assert cols.max() < ax.shape[1] / 2  # left half = patient's right
    assert rows.min() > ax.shape[0] / 2  # upper half = anterior
    assert scale_bar_mm(40.0) == 5 and scale_bar_mm(300.0) == 50


def test_bottom_line_says_when_federation_did_not_help():
    from fl_server.report.writer import verdict
    labels = {"0": "background", "1": "organ", "2": "lesion"}
    rows = [{"eval_set": s, "model": "global (final)", "cases": 3, "dice_1": 0.6, "dice_2": 0.0} for s in "ab"]
    gains = [{"site": "a", "model": "global (final)", "gain_dice_fg_mean": -0.05},
             {"site": "b", "model": "global (final)", "gain_dice_fg_mean": -0.01}]
    text = verdict(rows, gains, labels)
    assert "at 0 of 2 sites" in text and "a (-0.050, 3 cases)" in text
    assert "did not help" in text and "No model found the lesion" in text
    gains[0]["gain_dice_fg_mean"] = 0.1
    rows[0]["dice_2"] = 0.4
    text = verdict(rows, gains, labels)
    assert "at 1 of 2 sites" in text and "better at a (+0.100" in text and "did not help" not in text and "lesion" not in text


def test_a_failed_local_model_request_is_not_called_a_refusal(run_dir, fab):
    """cross_site.json records a site whose local-model query failed as consent false plus a
    failure: the report must not tell the reader that site refused."""
    from fl_server.report import make_report
    write_json(run_dir / "cross_site.json", {
        "rows": _matrix(fab), "consent": {"hospital_a": True, "hospital_b": False, "hospital_c": False},
        "failures": [{"model": "local-only (hospital_b)", "site": "hospital_b", "error": "timeout"}]})
    page = _Page()
    page.feed((make_report(run_dir, quiet=True) / "report.html").read_text())
    text = " ".join(page.text)
    assert "hospital_c did not: their local-only model" in text
    assert "hospital_b: the request for their local-only model failed" in text
    assert "hospital_b, hospital_c did not" not in text
