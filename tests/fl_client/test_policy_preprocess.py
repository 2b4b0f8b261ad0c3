"""The server's [preprocess] in the round config (issue 16 "auto") against the site's
policy: a valid table within the site's bounds, one table per run id, and the site's
own explicit table wins (a different one is refused). Real state files on disk."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fl_client import policy as P
from fl_client.site_preprocess import admit, write_own_preprocess
from fl_common import keys as K
from fl_common.config import PolicyTable
from imaging_core.config import PreprocessTable

POL = PolicyTable(require_secure_aggregation=False)
W = {"w": np.zeros(3, np.float32)}


def _wire(**over) -> str:
    return K.preprocess_wire(PreprocessTable(**over).model_dump())


def _cfg(rnd: int = 1, run: str = "run-1", **over) -> dict:
    return {K.SERVER_ROUND: rnd, K.RUN_ID: run, K.LR: 1e-3, K.PREPROCESS: _wire(**over)}


@pytest.mark.parametrize("over", [{"pixdim": [0.01, 1.0, 1.0]}, {"pixdim": [1.0, 1.0, 50.0]}, {"margin": 500}])
def test_a_table_outside_the_sites_bounds_is_refused(over):
    with pytest.raises(P.Refused) as e:
        P.check_config(POL, _cfg(**over), K.MSG_TRAIN)
    assert e.value.reason == P.PREPROCESS_BAD


@pytest.mark.parametrize("wire", ["{not json", json.dumps({"pixdim": [1.0, 1.0]}), json.dumps({"pixdimm": [1, 1, 1]}),
                                  json.dumps([1, 2, 3])])
def test_a_malformed_table_is_refused(wire):
    with pytest.raises(P.Refused) as e:
        P.check_config(POL, {**_cfg(), K.PREPROCESS: wire}, K.MSG_TRAIN)
    assert e.value.reason == P.PREPROCESS_BAD
    with pytest.raises(P.Refused):  # not a string at all
        P.check_config(POL, {**_cfg(), K.PREPROCESS: 3}, K.MSG_TRAIN)


def test_the_sites_own_bounds_decide():
    strict = PolicyTable(require_secure_aggregation=False, min_pixdim_mm=2.0)
    P.check_config(POL, _cfg(pixdim=[1.0, 1.0, 1.0]), K.MSG_TRAIN)
    with pytest.raises(P.Refused):
        P.check_config(strict, _cfg(pixdim=[1.0, 1.0, 1.0]), K.MSG_TRAIN)


def test_a_table_that_changes_within_a_run_is_refused(tmp_path):
    P.admit_train(POL, tmp_path, _cfg(1, pixdim=[2.0, 2.0, 2.0]), W, secure=True)
    P.admit_evaluate(POL, tmp_path, _cfg(1, pixdim=[2.0, 2.0, 2.0]), W)
    with pytest.raises(P.Refused) as e:
        P.admit_train(POL, tmp_path, _cfg(2, pixdim=[3.0, 3.0, 3.0]), W, secure=True)
    assert e.value.reason == P.PREPROCESS_CHANGED
    with pytest.raises(P.Refused) as e:  # nor for the final evaluation
        P.admit_evaluate(POL, tmp_path, _cfg(2, pixdim=[3.0, 3.0, 3.0]), W)
    assert e.value.reason == P.PREPROCESS_CHANGED
    P.admit_train(POL, tmp_path, _cfg(2, pixdim=[2.0, 2.0, 2.0]), W, secure=True)  # the run's own table
    P.admit_train(POL, tmp_path, _cfg(1, run="run-2", pixdim=[3.0, 3.0, 3.0]), W, secure=True)  # a new run may


def test_an_auto_site_takes_the_servers_table_and_needs_one(tmp_path):
    write_own_preprocess(tmp_path, None)
    sock = tmp_path / "worker.sock"
    admit(POL, sock, _cfg(pixdim=[3.0, 3.0, 3.0]))
    with pytest.raises(P.Refused) as e:
        admit(POL, sock, {K.SERVER_ROUND: 1, K.RUN_ID: "r", K.LR: 1e-3})
    assert e.value.reason == P.PREPROCESS_MISSING


def test_an_explicit_site_table_wins_and_another_is_refused(tmp_path):
    own = PreprocessTable(pixdim=[4.0, 4.0, 4.0]).model_dump()
    write_own_preprocess(tmp_path, own)
    sock = tmp_path / "worker.sock"
    admit(POL, sock, _cfg(pixdim=[4.0, 4.0, 4.0]))             # equal: fine
    admit(POL, sock, {K.SERVER_ROUND: 1, K.RUN_ID: "r", K.LR: 1e-3})  # none sent: the site's own
    with pytest.raises(P.Refused) as e:
        admit(POL, sock, _cfg(pixdim=[3.0, 3.0, 3.0]))
    assert e.value.reason == P.PREPROCESS_DIFFERS


def test_a_bad_site_file_is_the_sites_fault(tmp_path):
    admit(POL, tmp_path / "worker.sock", _cfg())  # no worker there: it fails at the worker instead
    (tmp_path / K.PREPROCESS_FILE).write_text("{")
    with pytest.raises(P.SiteFault, match="preprocess.json: unreadable"):
        admit(POL, tmp_path / "worker.sock", _cfg())
    (tmp_path / K.PREPROCESS_FILE).write_text('{"auto": false}')
    with pytest.raises(P.SiteFault, match="neither"):
        admit(POL, tmp_path / "worker.sock", _cfg())
