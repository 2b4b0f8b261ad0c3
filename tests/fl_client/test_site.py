"""`fedvox site` from a real startup kit and key directory: the node config it
hands the SuperNode, and a site whose worker cannot start stops with one clear
error and leaves no process behind."""
from __future__ import annotations

from pathlib import Path

import pytest

from fl_client.site import node_config, run_site
from fl_common import keys as K
from fl_common.supervise import LaunchError, pid_alive
from fl_common.config import example_federation_path
from fl_server.demo import enroll_and_provision

pytestmark = pytest.mark.timeout(120)


def test_node_config_uses_the_shared_keys(tmp_path):
    cfg = node_config("hospital_a", tmp_path / "w.sock", tmp_path, tmp_path / "auth.key",
                      tmp_path / "roster.json", tmp_path / "audit", roster_fingerprint="AAAA-BBBB")
    assert cfg == {K.NODE_SITE_NAME: "hospital_a", K.NODE_WORKER_SOCKET: str(tmp_path / "w.sock"),
                   K.NODE_STATE_DIR: str(tmp_path / "state"), K.NODE_AUTH_KEY: str(tmp_path / "auth.key"),
                   K.NODE_ROSTER: str(tmp_path / "roster.json"), K.NODE_AUDIT_DIR: str(tmp_path / "audit"),
                   K.NODE_ROSTER_FINGERPRINT: "AAAA-BBBB"}
    assert set(node_config("b", tmp_path / "s", tmp_path, None, None)) == {
        K.NODE_SITE_NAME, K.NODE_WORKER_SOCKET, K.NODE_STATE_DIR}


def test_a_site_whose_worker_fails_stops_cleanly(tmp_path):
    prov, keys = enroll_and_provision(tmp_path, ["hospital_a", "hospital_b"], "fedvox")
    empty = tmp_path / "no-data"
    empty.mkdir()
    with pytest.raises(LaunchError, match=r"site worker hospital_a exited \(2\)") as e:
        run_site(prov.site_kits["hospital_a"], keys["hospital_a"], tmp_path / "work", empty,
                 federation=example_federation_path())
    assert "hospital_a" in str(e.value) and (tmp_path / "work" / "worker.log").is_file()
    assert _live_with_arg(str(tmp_path / "work")) == []  # the group stopped what it started


def _live_with_arg(text: str) -> list[int]:
    """Live processes whose command line mentions ``text``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and pid_alive(int(d.name)):
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out
