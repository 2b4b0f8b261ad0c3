"""Key custody, attacked: the site makes its own key, the coordinator provisions
from requests and never holds a site key, and a site only uses the roster it
pinned. Real files, real keys, the real provision / site / secagg code paths."""
from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from fl_client.enroll import EnrollError, check_trust, init_site, read_keys, read_request, trust_roster
from fl_client.secagg import SiteSecAgg
from fl_client.site import run_site
from fl_common.config import example_federation_path
from fl_common.crypto import pki
from fl_common.crypto.secagg import x25519_keypair
from fl_common.kit import KEYS_TRUST, KitError, read_kit
from fl_common.secagg import BadSignature, ProtocolError
from fl_common.secagg.checks import advert_signed_bytes, check_advert
from fl_server.demo import enroll_and_provision
from fl_server.provision import ProvisionError, provision

pytestmark = pytest.mark.timeout(60)
SITES = ["hospital_a", "hospital_b", "hospital_c"]


def private_keys_under(root: Path) -> dict[Path, object]:
    """Every file under ``root`` holding private key material -> the key (or None
    if cryptography cannot load it: still private material)."""
    found = {}
    for p in root.rglob("*"):
        if p.is_file() and pki.is_private_key(data := p.read_bytes()):
            try:
                found[p] = pki.parse_private_key(data)
            except (ValueError, TypeError):
                found[p] = None
    return found


@pytest.fixture
def fed(tmp_path):
    prov, keys = enroll_and_provision(tmp_path, SITES, "fed")
    return prov, keys


def test_site_init_makes_a_private_key_dir_and_a_checkable_request(tmp_path):
    d = tmp_path / "keys-a"
    req_path = init_site("hospital_a", d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "auth.key").stat().st_mode) == 0o600
    req = read_request(req_path)
    assert req.site == "hospital_a" and req.public_key.startswith("ecdsa-sha2-nistp384 ")
    assert read_keys(d).public_key == req.public_key
    doc = json.loads(req_path.read_text())
    assert set(doc) == {"format", "site", "auth_public_key", "created", "fingerprint"}
    assert "PRIVATE" not in req_path.read_text()
    key_before = (d / "auth.key").read_bytes()
    with pytest.raises(EnrollError, match="already exists.*--force"):
        init_site("hospital_a", d)
    assert (d / "auth.key").read_bytes() == key_before  # never overwritten
    init_site("hospital_a", d, force=True)
    assert (d / "auth.key").read_bytes() != key_before
    with pytest.raises(EnrollError, match="bad site name"):
        init_site("../x", tmp_path / "k")


def test_attack_provisioning_writes_no_site_private_key(fed):
    prov, keys = fed
    roster_points = {pki.openssh_public(pki.load_enrollment_public_key(v)) for v in prov.roster.values()}
    found = private_keys_under(prov.root)
    for path, key in found.items():  # the coordinator's own keys only, none of them a site's
        assert path.parent == prov.root / "server", path
        assert key is not None and pki.openssh_public(key.public_key()) not in roster_points, path
    assert sorted(p.name for p in found) == ["bundle_signing.key", "ca.key", "run_record.key", "server.key"]
    for kit in prov.site_kits.values():
        assert not private_keys_under(kit), kit
        assert sorted(p.name for p in kit.iterdir()) == [
            "bundle_signing.pub", "ca.crt", "roster.fingerprint", "roster.json", "site.toml"]
    assert stat.S_IMODE(prov.bundle_key.stat().st_mode) == 0o600
    # the roster holds exactly the keys the sites made
    assert prov.roster == {s: read_keys(keys[s]).public_key for s in SITES}


def test_attack_tampered_enrollment_request_is_refused_at_provision(tmp_path):
    reqs = [init_site(s, tmp_path / "keys" / s) for s in ("a", "b")]
    doc = json.loads(reqs[1].read_text())
    evil = pki.openssh_public(pki.new_key(), comment="b")
    bad = tmp_path / "swapped.json"  # key swapped in transit, fingerprint left as it was
    bad.write_text(json.dumps({**doc, "auth_public_key": evil}))
    with pytest.raises(EnrollError, match=r"swapped\.json: fingerprint .* does not match"):
        provision(tmp_path / "p1", [reqs[0], bad])
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps({**doc, "site": "c"}))
    with pytest.raises(EnrollError, match=r"renamed\.json: fingerprint"):
        provision(tmp_path / "p2", [reqs[0], renamed])
    for name, text, msg in (("notjson.json", "{", "not JSON"),
                            ("extra.json", json.dumps({**doc, "private_key": "x"}), "exactly"),
                            ("key.json", json.dumps({**doc, "auth_public_key": "ssh-rsa AAAA"}),
                             "auth_public_key")):
        (tmp_path / name).write_text(text)
        with pytest.raises(EnrollError, match=rf"{name}: .*{msg}"):
            provision(tmp_path / "p3", [reqs[0], tmp_path / name])
    with pytest.raises(ProvisionError, match=r"already enrolled"):
        provision(tmp_path / "p4", [reqs[0], reqs[1], reqs[1]])
    with pytest.raises(ProvisionError, match=r"same public key"):
        copy = tmp_path / "copy.json"  # another site re-using a's key: refused
        a = json.loads(reqs[0].read_text())
        fp = pki.request_fingerprint("z", a["auth_public_key"], a["created"])
        copy.write_text(json.dumps({**a, "site": "z", "fingerprint": fp}))
        provision(tmp_path / "p5", [reqs[0], copy])
    assert not any((tmp_path / f"p{i}").exists() for i in range(1, 6))


def _swap_one_key(kit_dir: Path, site: str) -> None:
    roster = json.loads((kit_dir / "roster.json").read_text())
    roster[site] = pki.openssh_public(pki.new_key(), comment=site)
    (kit_dir / "roster.json").write_text(json.dumps(roster))


def test_attack_swapped_roster_key_is_refused_at_start_and_at_secagg_load(fed, tmp_path):
    prov, keys = fed
    kit_dir = prov.site_kits["hospital_a"]
    pin = check_trust(read_kit(kit_dir), keys["hospital_a"])
    _swap_one_key(kit_dir, "hospital_c")
    work = tmp_path / "work"
    with pytest.raises(EnrollError, match=r"roster\.json: roster fingerprint .* does not match .* pinned in .*trust\.toml"):
        run_site(kit_dir, keys["hospital_a"], work, tmp_path, federation=example_federation_path())
    assert not (work / "worker.log").exists()  # refused before anything started
    swapped = read_kit(kit_dir).roster
    with pytest.raises(ProtocolError, match="does not match the pinned"):
        SiteSecAgg("hospital_a", "run-1", read_keys(keys["hospital_a"]).auth_key, swapped,
                   tmp_path / "state", roster_fingerprint=pin)
    # the honest roster still loads with the pin
    SiteSecAgg("hospital_a", "run-1", read_keys(keys["hospital_a"]).auth_key, prov.roster,
               tmp_path / "state2", roster_fingerprint=pin)


def test_attack_unpinned_roster_is_refused_unless_trusted_on_first_use(fed, tmp_path, capsys):
    prov, keys = fed
    kit = read_kit(prov.site_kits["hospital_b"])
    (keys["hospital_b"] / KEYS_TRUST).unlink()
    with pytest.raises(EnrollError, match=r"trust\.toml: no pinned roster fingerprint"):
        run_site(kit.dir, keys["hospital_b"], tmp_path / "w", tmp_path, federation=example_federation_path())
    assert not (tmp_path / "w" / "worker.log").exists()
    pin = check_trust(kit, keys["hospital_b"], trust_on_first_use=True)
    assert pin == prov.roster_fingerprint and "trusted the roster on first use" in capsys.readouterr().err
    assert check_trust(kit, keys["hospital_b"]) == pin  # now pinned
    # a coordinator that pre-pins in the kit's site.toml is not believed
    with kit.site_toml.open("a") as f:
        f.write(f'\n[trust]\nroster_fingerprint = "{prov.roster_fingerprint}"\n')
    with pytest.raises(KitError, match=r"site\.toml: a \[trust\] table in the startup kit is not honoured"):
        read_kit(kit.dir)


def test_site_trust_checks_the_fingerprint_it_is_given(fed):
    prov, keys = fed
    kit = read_kit(prov.site_kits["hospital_c"])
    wrong = pki.roster_fingerprint({"x": prov.roster["hospital_a"]})
    with pytest.raises(EnrollError, match="is not the .* you were given: nothing pinned"):
        trust_roster(kit, keys["hospital_c"], wrong)
    assert (prov.site_kits["hospital_c"] / "roster.fingerprint").read_text().strip() == prov.roster_fingerprint
    assert trust_roster(kit, keys["hospital_c"], prov.roster_fingerprint.lower()).is_file()
    # a kit for another site, or a key directory whose key is not in the roster
    with pytest.raises(EnrollError, match="kit is for site 'hospital_c'"):
        trust_roster(kit, keys["hospital_a"], prov.roster_fingerprint)


def test_roster_fingerprint_changes_with_any_key_and_ignores_comments(fed):
    prov, _ = fed
    r = dict(prov.roster)
    fp = pki.roster_fingerprint(r)
    assert len(fp) == 39 and fp.count("-") == 7
    assert pki.roster_fingerprint({k: v.rsplit(" ", 1)[0] for k, v in r.items()}) == fp
    assert pki.roster_fingerprint({**r, "hospital_a": r["hospital_b"]}) != fp
    assert pki.roster_fingerprint({k: v for k, v in r.items() if k != "hospital_c"}) != fp
    assert pki.roster_fingerprint({("x" if k == "hospital_a" else k): v for k, v in r.items()}) != fp


def test_attack_coordinator_cannot_play_a_site(fed, tmp_path):
    """The coordinator holds the provision tree only. It finds no key of site b
    there; a key it makes itself for b is refused by a peer's signature check,
    and putting that key into the roster breaks every site's pin."""
    prov, keys = fed
    roster_b = pki.openssh_public(pki.load_enrollment_public_key(prov.roster["hospital_b"]))
    held = [k for k in private_keys_under(prov.root).values()
            if k is not None and pki.openssh_public(k.public_key()) == roster_b]
    assert held == []
    forged = pki.new_key()
    ch, mk = x25519_keypair()[1], x25519_keypair()[1]
    advert = {"site_id": "hospital_b", "epoch": 1, "channel_public_key": ch, "mask_public_key": mk,
              "signature": pki.sign(forged, advert_signed_bytes("run-1", "hospital_b", 1, ch, mk))}
    pin = check_trust(read_kit(prov.site_kits["hospital_a"]), keys["hospital_a"])
    site_a = SiteSecAgg("hospital_a", "run-1", read_keys(keys["hospital_a"]).auth_key, prov.roster,
                        tmp_path / "a", roster_fingerprint=pin)
    with pytest.raises(BadSignature, match="hospital_b"):
        check_advert("run-1", advert, site_a.roster, "roster")
    with pytest.raises(ProtocolError, match="does not match the pinned"):
        SiteSecAgg("hospital_a", "run-1", read_keys(keys["hospital_a"]).auth_key,
                   {**prov.roster, "hospital_b": pki.openssh_public(forged, comment="hospital_b")},
                   tmp_path / "a2", roster_fingerprint=pin)


def test_attack_the_clientapp_loads_only_the_pinned_roster(fed, tmp_path):
    """The ClientApp's own loader (fl_client.client_app), fed the node config
    `fedvox site` writes: a roster file swapped under the running site, or a
    node config without the site's pin, is refused."""
    from flwr.common import Context, RecordDict

    from fl_client import client_app
    from fl_client.site import node_config
    from fl_common import keys as K
    prov, keys = fed
    pin = check_trust(read_kit(prov.site_kits["hospital_a"]), keys["hospital_a"])
    roster = tmp_path / "roster.json"
    roster.write_text(json.dumps(prov.roster))
    cfg = node_config("hospital_a", tmp_path / "w.sock", tmp_path, read_keys(keys["hospital_a"]).auth_key,
                      roster, None, roster_fingerprint=pin)

    def ctx(c):
        return Context(run_id=1, node_id=1, node_config=c, state=RecordDict(), run_config={})
    assert client_app._secagg(ctx(cfg), "s1").site_id == "hospital_a"
    _swap_one_key(tmp_path, "hospital_b")
    with pytest.raises(ProtocolError, match="does not match the pinned"):
        client_app._secagg(ctx(cfg), "s2")
    unpinned = {k: v for k, v in cfg.items() if k != K.NODE_ROSTER_FINGERPRINT}
    with pytest.raises(RuntimeError, match="roster-fingerprint"):
        client_app._secagg(ctx(unpinned), "s3")
