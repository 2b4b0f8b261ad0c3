"""The site side alone: its state file, its refusal of a key that is not the
enrolled one, and a key advert any peer can check."""
from __future__ import annotations

import os
import stat

import pytest

from fl_client.secagg import SiteSecAgg
from fl_client.secagg.state import STATE_FILE, SiteState
from fl_common.crypto import pki
from fl_common.secagg import ProtocolError, StateError, wire
from fl_common.secagg.checks import check_advert, load_roster


@pytest.fixture(scope="module")
def keys():
    return {s: pki.generate_enrollment_key() for s in ("site-a", "site-b")}


def _roster(keys):
    return {s: pki.enrollment_public_openssh(k).decode() for s, k in keys.items()}


def test_state_is_written_0600_and_read_back(tmp_path):
    st = SiteState(tmp_path / "st", "run-1", "site-a")
    st.data["epoch"] = 7
    st.save()
    assert stat.S_IMODE(os.stat(tmp_path / "st").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "st" / STATE_FILE).st_mode) == 0o600
    again = SiteState(tmp_path / "st", "run-1", "site-a")
    assert again.data["epoch"] == 7 and again.data["channel_sk"] == st.data["channel_sk"]
    assert [p.name for p in (tmp_path / "st").iterdir()] == [STATE_FILE]  # no temp file left


def test_state_of_another_site_or_run_or_a_broken_file_is_refused(tmp_path):
    SiteState(tmp_path, "run-1", "site-a").save()
    with pytest.raises(StateError, match="belongs to site 'site-a' run 'run-1'"):
        SiteState(tmp_path, "run-2", "site-a")
    with pytest.raises(StateError, match="belongs to site"):
        SiteState(tmp_path, "run-1", "site-b")
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(StateError, match="unreadable"):
        SiteState(tmp_path, "run-1", "site-a")


def test_site_refuses_a_key_that_is_not_its_enrolled_one(tmp_path, keys):
    roster = _roster(keys)
    with pytest.raises(ProtocolError, match="does not match the roster"):
        SiteSecAgg("site-a", "run-1", keys["site-b"], roster, tmp_path)
    with pytest.raises(ProtocolError, match="not in its own roster"):
        SiteSecAgg("site-c", "run-1", keys["site-a"], roster, tmp_path)


def test_advert_is_signed_and_checkable_by_peers(tmp_path, keys):
    site = SiteSecAgg("site-a", "run-1", keys["site-a"], _roster(keys), tmp_path)
    msg = wire.decode(wire.ADVERTISEMENT, site.advertise())
    adv = msg["advert"]
    assert msg["run_id"] == "run-1" and adv["epoch"] == 1
    check_advert("run-1", adv, load_roster(_roster(keys)), "test")  # no exception
    assert (tmp_path / STATE_FILE).is_file()  # the new mask key is on disk before it leaves
