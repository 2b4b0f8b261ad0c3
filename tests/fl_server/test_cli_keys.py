"""`fedvox site init / provision --enroll / site fingerprint / site trust / site`
as real processes: the whole hand-over between hospital and coordinator, and
one clear line (exit 2) for each refusal."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(180)


def _refused(r, *words):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


def test_the_enrollment_hand_over_on_the_command_line(cli, tmp_path):
    reqs = []
    for s in ("hospital_a", "hospital_b"):
        r = cli("site", "init", "--site", s, "--out", tmp_path / "keys" / s)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["site"] == s and "never leaves this site" in r.stderr
        reqs.append(out["request"])
    _refused(cli("site", "init", "--site", "hospital_a", "--out", tmp_path / "keys" / "hospital_a"),
             "auth.key", "--force")
    r = cli("provision", "--out", tmp_path / "prov", "--enroll", *reqs)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    fp = out["roster_fingerprint"]
    assert fp in r.stderr and sorted(out["enrolled"]) == ["hospital_a", "hospital_b"]
    kit = out["kits"]["hospital_a"]
    keys = tmp_path / "keys" / "hospital_a"
    r = cli("site", "fingerprint", kit)
    assert r.returncode == 0 and r.stdout.strip() == fp
    # not pinned yet: `fedvox site` refuses before starting anything
    _refused(cli("site", "--kit", kit, "--keys", keys, "--data", tmp_path), "trust.toml",
             "no pinned roster fingerprint")
    _refused(cli("site", "trust", kit, "--keys", keys, "--fingerprint", "AAAA-" * 7 + "AAAA"),
             "roster.json", "nothing pinned")
    r = cli("site", "trust", kit, "--keys", keys, "--fingerprint", fp)
    assert r.returncode == 0 and "trust.toml" in r.stdout, r.stderr
    # a tampered request: one line naming the file
    bad = tmp_path / "bad.json"
    doc = json.loads(open(reqs[1]).read())
    bad.write_text(json.dumps({**doc, "site": "hospital_c"}))
    _refused(cli("provision", "--out", tmp_path / "prov2", "--enroll", reqs[0], bad), "bad.json",
             "does not match the request's content")
    _refused(cli("site"), "--kit", "--keys", "--data")
