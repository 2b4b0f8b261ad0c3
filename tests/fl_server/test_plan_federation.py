"""The plan's fingerprint query in a real federation on loopback: SuperLink
with TLS and node auth, a site worker + SuperNode per sites_example hospital,
secure aggregation on. `fedvox server`'s spec asks for the check: it runs
before round 1, the run record gets the table and plan.json, and what left
each site for the query is the masked vector, the summary record and protocol
bytes only. With [preprocess] = "auto" the run trains, evaluates and exports with the
plan's table."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fl_client.site import start_site
from fl_common.config import example_federation_path
from fl_common.kit import read_kit
from fl_common.supervise import ProcessGroup
from fl_server import deploy
from fl_server.demo import enroll_and_provision
from fl_server.records import RunRecord

pytestmark = [pytest.mark.timeout(420)]
SITES = ["hospital_a", "hospital_b", "hospital_c"]


def _tiny(text: str, patch: int) -> str:
    """sites_example's TOML with a tiny UNet, one local epoch, no declared colluder."""
    return (text.replace("channels = [8, 16, 32, 64]", "channels = [4, 8, 16]")
                .replace("strides = [2, 2, 2]", "strides = [2, 2]").replace("local_epochs = 2", "local_epochs = 1")
                .replace("patch_size = [32, 32, 32]", f"patch_size = [{patch}, {patch}, {patch}]")
                .replace("[federation]\n", "[federation]\ncolluding_sites = 0\n", 1))


def _federate(tmp_path: Path, text: str, name: str, **spec):
    """sites_example's data, ``text`` as the federation TOML, one round over a real
    SuperLink and the three sites, the record signed -> (the run's result, the provision)."""
    from sites_example.generate import generate
    generate(tmp_path / "data", zoom=0.7, cases=0.5, seed=0)
    shutil.copytree(example_federation_path().parent / "sites", tmp_path / "sites")
    fed = tmp_path / "federation.toml"
    fed.write_text(text)
    prov, keys = enroll_and_provision(tmp_path, SITES, f"fedvox-{name}-test")
    with ProcessGroup(f"test-{name}") as group:
        sl, cli = deploy.start_superlink(group, prov, tmp_path / "server", None, False)
        for n in SITES:
            start_site(group, read_kit(prov.site_kits[n]), keys[n], fed, tmp_path / "sites" / f"{n}.toml",
                       tmp_path / "work" / n, sl.address, data_base=tmp_path / "data",
                       audit_dir=tmp_path / "audit" / n)
        spec = deploy.write_spec(tmp_path / "run", fed, tmp_path / "data", True, prov.roster_path,
                                 provision=prov.root, rounds=1, connect_timeout=60, **spec)
        return deploy.run_federation(cli, prov.federation, spec, 360, tmp_path / "server" / "run.log"), prov


def test_fingerprint_stage_before_round_1(tmp_path):
    text = _tiny((example_federation_path().parent / "federation.toml").read_text(), 24)
    res, prov = _federate(tmp_path, text, "plan", harmonisation_check=True, plan_memory_gb=1.0)
    assert res.ok, f"{res.status}: {res.details}"
    # the ServerApp signed its record with the provision's run-record key: plan, spec, models
    from fl_server.record_manifest import RecordKey
    rec = RunRecord.open(tmp_path / "run", verify_key=RecordKey.verifier(prov.run_record_pub))
    assert rec.load_model("final") and rec.load_round_checkpoint(1)["round"] == 1
    assert [r["site"] for r in rec.harmonisation["rows"]] == SITES
    assert rec.plan["cases"] == sum(r["cases"] for r in rec.harmonisation["rows"])
    assert [r["round"] for r in rec.rounds if r.get("status") == "ok"] == [1]
    for site in SITES:
        lines = [json.loads(x) for x in (tmp_path / "audit" / site / "outgoing.jsonl").read_text().splitlines()]
        fp = [x for x in lines if x["message_type"] == "query.fingerprint"]
        assert len(fp) == 1
        recs = fp[0]["records"]
        assert set(recs) == {"info", "masked", "secagg", "fingerprint"}
        assert recs["masked"]["arrays"]["vector"]["dtype"] == "uint32"
        assert [x["message_type"] for x in lines].count("query.fingerprint_reveal") == 1


def _spacings(cache: Path) -> set[tuple[float, ...]]:
    """The voxel spacing of every cache entry, from the affine each one recorded when it was built."""
    import numpy as np
    out = set()
    for meta in cache.glob("*/meta.json"):
        aff = np.asarray(json.loads(meta.read_text())["affine"])
        out.add(tuple(round(float(np.linalg.norm(aff[:3, i])), 4) for i in range(3)))
    return out


def _auto(text: str) -> str:
    """sites_example's federation TOML with its [preprocess] tables replaced by "auto"."""
    start = text.index("# Preprocessing shared")
    end = text.index("# Post-processing")
    return 'preprocess = "auto"\n' + text[:start] + text[end:]


def test_auto_preprocess_trains_with_the_plans_table_end_to_end(tmp_path):
    """[preprocess] = "auto": the plan stage runs without being asked (default memory budget),
    plan.json is in the run record, and the sites' and the coordinator's caches were built
    with the plan's spacing (not the 4 mm the example's table says)."""
    from imaging_core.plan.planner import DEFAULT_MEMORY_GB
    text = _auto(_tiny((example_federation_path().parent / "federation.toml").read_text(), 16)
                 .replace("samples_per_case = 4", "samples_per_case = 2"))
    res, _ = _federate(tmp_path, text, "auto")  # no harmonisation_check, no memory budget: auto asks
    assert res.ok, f"{res.status}: {res.details}"
    rec = RunRecord.open(tmp_path / "run")
    plan = rec.plan
    assert plan is not None and plan["memory_gb"] == DEFAULT_MEMORY_GB and "default" in plan["memory_gb_source"]
    assert [r["site"] for r in rec.harmonisation["rows"]] == SITES
    assert rec.info["preprocess_source"] == "plan" and rec.preprocess == plan["preprocess"]
    assert [r["round"] for r in rec.rounds if r.get("status") == "ok"] == [1]
    pixdim = tuple(round(p, 4) for p in plan["preprocess"]["pixdim"])
    assert pixdim != (4.0, 4.0, 4.0)  # the example's own table would have said 4 mm
    for site in SITES:  # what each site's cache recorded when it built its entries
        assert _spacings(tmp_path / "work" / site / "cache") == {pixdim}, site
        assert f"pixdim {plan['preprocess']['pixdim']}" in (tmp_path / "work" / site / "worker.log").read_text()
    assert _spacings(tmp_path / "run" / "coordinator-cache") == {pixdim}
    assert rec.info["evaluation_space"] in ("original", "preprocessed") and rec.central(1)
    from fl_server.export import export_run  # the bundle preprocesses as the run trained
    meta = json.loads((export_run(tmp_path / "run", tmp_path / "bundle") / "configs" / "metadata.json").read_text())
    assert meta["data_contract"]["pixdim"] == plan["preprocess"]["pixdim"]
    assert meta["data_contract"]["intensity"]["CT"] == plan["preprocess"]["intensity"]["CT"]
    assert meta["federated_provenance"]["preprocess_source"] == "plan"
