"""`fedvox site status` on a site work directory laid out as `fedvox site` leaves
it: its pid file, the SuperNode log with fl_common.supervise's start header,
the policy's per-run state (written by fl_client.policy itself), the worker's
ready file and node config naming a real site.toml."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import tomli_w

from fl_client.policy import admit_evaluate, admit_train
from fl_client.site_status import write_site_pid
from fl_common import exit_codes as X, keys as K, pidfile
from fl_common.config import read_site_file
from fl_server.cli import main

SITE_TOML = Path(__file__).resolve().parents[2] / "sites_example" / "sites" / "hospital_a.toml"


def _site_work(work: Path) -> None:
    work.mkdir(parents=True)
    (work / "supernode.log").write_text(
        "\n# fedvox: start supernode:hospital_a: flower-supernode ...\nINFO: SuperNode ID: 111\n"
        "\n# fedvox: start supernode:hospital_a: flower-supernode ...\nINFO: Starting\nINFO: SuperNode ID: 222\n")
    (work / "node_config.toml").write_text(tomli_w.dumps({K.NODE_SITE_CONFIG: str(SITE_TOML)}))
    (work / "worker.ready").write_text(json.dumps({"site": "hospital_a", "device": "cpu", "num_train": 4,
                                                   "num_val": 2, "skipped": {"c9": "unreadable"}}))
    (work / "cache").mkdir()
    (work / "cache" / "case.npz").write_bytes(b"x" * 2000)
    pol = read_site_file(SITE_TOML).policy
    arrays = {"w": np.zeros(3, np.float32)}
    for r in (1, 2):  # the policy's own record of the rounds this site joined
        cfg = {K.RUN_ID: "run-7", K.SERVER_ROUND: r, "local_epochs": 1, K.LR: 0.01}
        admit_train(pol, work / "state", cfg, arrays, secure=True)
        admit_evaluate(pol, work / "state", cfg, arrays)


def test_site_status_of_a_running_connected_site(tmp_path, capsys):
    work = tmp_path / "site"
    _site_work(work)
    write_site_pid(work, "hospital_a", "coord.example:8000", "tag")  # this process plays `fedvox site`
    rc = main(["site", "status", "--work", str(work), "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == X.OK and s["up"] and s["site"] == "hospital_a" and s["superlink"] == "coord.example:8000"
    assert s["supernode"]["state"] == "connected" and s["supernode"]["node_id"] == 222  # since the last start
    assert s["last_round"]["round"] == 2 and s["last_round"]["rounds_trained"] == 2
    assert s["cache"]["ready"] and s["cache"]["num_train"] == 4 and s["cache"]["skipped"] == 1
    assert s["cache"]["bytes"] == 2000 and s["device"] == "cpu"
    pol = read_site_file(SITE_TOML).policy.model_dump()
    assert s["policy"]["file"] == str(SITE_TOML) and {k: s["policy"][k] for k in pol} == json.loads(json.dumps(pol))
    rc = main(["site", "--work", str(work), "status"])  # --work before the subcommand works too
    out = capsys.readouterr().out
    assert rc == X.OK and "SuperNode: connected as node 222 to coord.example:8000" in out
    assert "last round joined: 2 (2 trained in this run" in out and "policy in force" in out


def test_site_status_of_a_stopped_site_says_not_running_and_exits_3(tmp_path, capsys):
    work = tmp_path / "site"
    _site_work(work)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    info = {"pid": dead.pid, "start_ticks": 1, "site": "hospital_a", "superlink": "x:1"}
    (work / "site.json").write_text(json.dumps(info))
    assert not pidfile.alive(info)
    rc = main(["site", "status", "--work", str(work)])
    cap = capsys.readouterr()
    assert rc == X.NOT_RUNNING and "not running" in cap.out.splitlines()[0]
    assert "SuperNode: not running" in cap.out and "not up and connected" in cap.err
    rc = main(["site", "status", "--work", str(tmp_path / "nothing")])
    assert rc == X.USAGE and "not a site work directory" in capsys.readouterr().err
