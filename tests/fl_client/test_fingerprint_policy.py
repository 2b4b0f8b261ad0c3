"""The plan's fingerprint query at one site, through the real ClientApp handler
(fl_client.client_app.fingerprint) over a real fingerprint the site computed from
real NIfTI files, with the [policy] of a real site.toml: no count below the
small-count threshold and no orientation name of one or two cases leaves, the
counts do not sum to a hidden case count, and the site answers one request per
run id (an identical repeat gets the identical bytes), a bounded number per day."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fl_common import keys as K

NODE = 12
OPEN = "require_secure_aggregation = false\n"



def _datalist(d: Path, flips: list[bool]) -> Path:
    """Tiny CT cases; a flipped one is stored LAS instead of RAS."""
    rng = np.random.default_rng(0)
    d.mkdir(parents=True)
    items = []
    for i, flip in enumerate(flips):
        x = (-1000 + rng.normal(0, 5, (12, 12, 8))).astype(np.float32)
        x[3:-3, 3:-3, 2:-2] = 40
        lab = np.zeros((12, 12, 8), np.uint8)
        lab[4:8, 4:8, 3:5] = 1
        aff = np.diag([-2.0 if flip else 2.0, 2.0, 3.0, 1.0])
        nib.save(nib.Nifti1Image(x, aff), d / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), d / f"c{i}_seg.nii.gz")
        items.append({"image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"})
    (d / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}, "training": items}))
    return d / "dataset.json"


class Site:
    """A site whose worker wrote its fingerprint (4 RAS cases, 1 LAS), and its node config."""

    def __init__(self, root: Path, policy: str, flips=(False, False, False, False, True)):
        from fl_client.fingerprint import write_fingerprint
        work = root / "work"
        work.mkdir(parents=True, exist_ok=True)
        if not (work / K.FINGERPRINT_FILE).exists():
            write_fingerprint(_datalist(root / "data", list(flips)), "CT", "hospital_a", work / K.FINGERPRINT_FILE)
        (root / "site.toml").write_text(f'[site]\nname = "hospital_a"\n\n[policy]\n{OPEN}{policy}\n')
        self.node_config = {K.NODE_SITE_NAME: "hospital_a", K.NODE_WORKER_SOCKET: str(work / "worker.sock"),
                            K.NODE_STATE_DIR: str(root / "state"), K.NODE_SITE_CONFIG: str(root / "site.toml")}

    def ask(self, run: str, **cfg) -> Message:
        from fl_client import client_app
        content = RecordDict({K.REC_CONFIG: ConfigRecord({K.SERVER_ROUND: 1, K.RUN_ID: run, **cfg})})
        msg = Message(content=content, dst_node_id=NODE, message_type=K.query_type(K.PLAN_FINGERPRINT))
        ctx = Context(run_id=42, node_id=NODE, node_config=dict(self.node_config), state=RecordDict(), run_config={})
        return client_app.fingerprint(msg, ctx)


def _side(reply: Message) -> dict:
    assert not reply.has_error(), reply.error
    return json.loads(bytes(reply.content.config_records[K.REC_FINGERPRINT][K.PAYLOAD]))


def _refused(reply: Message) -> str:
    assert reply.has_error() and not reply.has_content() and reply.error.code == K.ERR_REFUSED
    return reply.error.reason


def _counts(side: dict) -> list[int]:
    return [n for field in side["categorical"].values() for n in field.values()]


def test_no_small_count_no_lone_orientation_and_no_hidden_total_leave(tmp_path):
    side = _side(Site(tmp_path, "").ask("run-1"))  # the default metrics: no num_val
    assert side["summary"]["cases"] is None
    assert "LAS" not in json.dumps(side)  # the one LAS case's orientation is named nowhere
    assert side["summary"]["orientations"] == ["RAS"]
    assert _counts(side) and all(n >= 3 for n in _counts(side)), side["categorical"]
    # the 5 cases: the reported counts are coarse and do not add up to them
    assert all(n % 3 == 0 for n in _counts(side))
    assert sum(side["categorical"]["orientation"].values()) != 5


def test_where_the_case_count_may_leave_counts_are_exact_but_still_none_below_three(tmp_path):
    side = _side(Site(tmp_path, 'metrics = ["dice_fg_mean", "num_val"]').ask("run-1"))
    assert side["summary"]["cases"] == 5
    assert side["categorical"]["orientation"] == {"RAS": 4}  # the lone LAS case: left out, not "other": 1
    assert "LAS" not in json.dumps(side)


def test_one_answer_per_run_id_an_identical_repeat_gets_the_same_bytes_and_a_daily_bound(tmp_path):
    site = Site(tmp_path, "max_fingerprints_per_day = 2")
    first = site.ask("run-a")
    again = Site(tmp_path, "max_fingerprints_per_day = 2").ask("run-a")  # a new ClientApp process
    assert bytes(again.content.config_records[K.REC_FINGERPRINT][K.PAYLOAD]) == \
        bytes(first.content.config_records[K.REC_FINGERPRINT][K.PAYLOAD])
    # another request under an answered run id counts as a new one: refused
    assert "already answered" in _refused(site.ask("run-a", **{K.SERVER_ROUND: 2}))
    assert not site.ask("run-b").has_error()
    assert "no fingerprint answer left today" in _refused(site.ask("run-c"))
    assert not site.ask("run-b").has_error()  # repeats stay answerable: they reveal nothing new
    ledger = json.loads((tmp_path / "state" / "policy" / "releases.json").read_text())
    assert len(ledger["fingerprints"]) == 2 and "run-a" not in json.dumps(ledger)  # run ids only hashed


def test_a_corrupt_ledger_stops_the_answer_with_a_site_fault(tmp_path):
    site = Site(tmp_path, "")
    (tmp_path / "state" / "policy").mkdir(parents=True)
    (tmp_path / "state" / "policy" / "releases.json").write_text("{not json")
    reply = site.ask("run-1")
    assert reply.has_error() and reply.error.code == K.ERR_INTERNAL
    assert "releases.json" in (tmp_path / "state" / "policy.log").read_text()


def test_a_failed_attempt_spends_no_answer(tmp_path):
    site = Site(tmp_path, "max_fingerprints_per_day = 1")
    fp = tmp_path / "work" / K.FINGERPRINT_FILE
    good = fp.read_text()
    doc = json.loads(good)
    fp.write_text(json.dumps({**doc, "vector": doc["vector"][:-3]}))  # the worker wrote a broken file
    reply = site.ask("run-1")
    assert reply.has_error() and reply.error.code == K.ERR_BAD_REQUEST
    fp.write_text(good)
    assert _side(site.ask("run-1"))["summary"]["orientations"] == ["RAS"]
