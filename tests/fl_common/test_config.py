"""Federation and site TOML loading through the typed schema: defaults, and one
error naming the file, the table and the key for bad input."""
import pytest

from fl_common.config import (Federation, STRATEGIES, example_federation_path, load_federation, load_site,
                              read_site_file)
from imaging_core.config import ConfigError, ImagingConfig
from imaging_core.errors import ImagingError

SITE = '[site]\nname = "a"\nmodality = "CT"\n'


def _write(tmp_path, train: str = "", labels: str = '0 = "background"\n1 = "organ"\n', sites: bool = True,
           federation: str = "rounds = 2\n", extra: str = "", site: str = SITE):
    (tmp_path / "a.toml").write_text(site)
    text = f"[federation]\n{federation}\n[train]\n{train}\n[labels]\n{labels}\n{extra}\n"
    if sites:
        text += '[[sites]]\nconfig = "a.toml"\n'
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def _err(path, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_federation(path, **kw)
    return e.value


def test_example_federation_loads_with_its_site_recipe():
    fed = load_federation(example_federation_path(), data_base="/data")
    assert isinstance(fed, Federation) and isinstance(fed, ImagingConfig)
    assert [s.name for s in fed.sites] == ["hospital_a", "hospital_b", "hospital_c"]
    assert fed.sites[0].data_root == "/data/hospital_a"
    assert fed.sites[0].datalist_path == "/data/hospital_a/dataset.json"
    assert fed.coordinator.name == "coordinator" and fed.all_sites[-1] == fed.coordinator
    assert fed.train.patches_per_step == 2 and fed.preprocess.pixdim == [4.0, 4.0, 4.0]
    assert fed.federation.rounds == 3 and fed.path == str(example_federation_path())


def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    fed = load_federation(_write(tmp_path, "lr = 0.01\n"))
    assert fed.train.lr == 0.01 and fed.train.loss == "dicece"
    assert fed.federation.rounds == 2 and fed.federation.strategy == "fedavg"
    assert fed.federation.secagg_threshold is None and fed.federation.secagg_clip == 4.0
    assert fed.labels == {0: "background", 1: "organ"}
    assert fed.coordinator is None and fed.sites[0].datalist_path == str(tmp_path / "a" / "dataset.json")


@pytest.mark.parametrize("kw, table, key, words", [
    ({"train": "patches_per_stp = 2\n"}, "train", "patches_per_stp", "did you mean 'patches_per_step'?"),
    ({"train": "patches_per_step = -1\n"}, "train", "patches_per_step", "greater than or equal to 0"),
    ({"train": "patches_per_step = 2\ngrad_accum = 2\n"}, "train", None, "cannot be combined with grad_accum"),
    ({"federation": 'rounds = "three"\n'}, "federation", "rounds", "valid integer"),
    ({"federation": 'strategy = "fedavgg"\n'}, "federation", "strategy", "did you mean 'fedavg'?"),
    ({"federation": "rounds = 0\n"}, "federation", "rounds", "greater than or equal to 1"),
    ({"federation": "secagg_clip = -1.0\n"}, "federation", "secagg_clip", "greater than 0"),
    ({"federation": "min_site = 2\n"}, "federation", "min_site", "did you mean 'min_sites'?"),
    ({"extra": "[preprocess]\npixdimm = [4, 4, 4]\n"}, "preprocess", "pixdimm", "did you mean 'pixdim'?"),
    ({"extra": "[sampling]\npatch_size = [32, 32]\n"}, "sampling", "patch_size", "at least 3"),
    ({"labels": 'bg = "background"\n'}, "labels", None, "keys must be integers"),
    ({"site": '[site]\nname = "a"\nmodality = "PET"\n'}, "site", "modality", "is not one of CT, MR"),
    ({"site": '[site]\nname = "a"\ndatalst = "x.json"\n'}, "site", "datalst", "did you mean 'datalist'?"),
])
def test_bad_input_is_one_error_naming_file_table_and_key(tmp_path, kw, table, key, words):
    e = _err(_write(tmp_path, **kw))
    bad_file = tmp_path / ("a.toml" if "site" in kw else "federation.toml")
    assert e.path == str(bad_file) and str(e).startswith(f"{bad_file}: [{table}]")
    assert (e.table, e.key) == (table, key) and words in str(e)


def test_a_misspelt_table_is_one_error_with_did_you_mean(tmp_path):
    e = _err(_write(tmp_path, extra="[postproces]\nchain = []\n"))
    assert "unknown table [postproces]" in str(e) and "'postprocess'" in str(e)
    e = _err(_write(tmp_path, extra='[[site]]\nconfig = "a.toml"\n'))
    assert "unknown table [site]" in str(e) and "'sites'" in str(e)


def test_other_bad_federations_name_the_file(tmp_path):
    with pytest.raises(ImagingError, match="config file not found"):
        load_federation(tmp_path / "missing.toml")
    with pytest.raises(ImagingError, match="no \\[\\[sites\\]\\] listed"):
        load_federation(_write(tmp_path, sites=False))
    assert load_federation(_write(tmp_path, sites=False), require_sites=False).sites == []
    path = _write(tmp_path)
    path.write_text(path.read_text() + '\n[[sites]]\nconfg = "b.toml"\n')
    e = _err(path)
    assert (e.table, e.key) == ("sites", "confg") and "did you mean 'config'?" in str(e)


def test_every_strategy_the_server_knows_is_accepted(tmp_path):
    from fl_server.strategy import ServerOptimizer
    for name in STRATEGIES:
        fed = load_federation(_write(tmp_path, federation=f'strategy = "{name}"\n'))
        assert ServerOptimizer.from_federation(fed.federation).name == name


def test_site_toml_has_one_parser_for_the_worker_and_the_startup_kit(tmp_path):
    p = tmp_path / "site.toml"
    p.write_text('[site]\nname = "b"\ndata_root = "/data/b"\n\n[federation]\nname = "fed"\n\n'
                 '[superlink]\naddress = "10.0.0.1:9092"\n')
    doc = read_site_file(p)
    assert doc.site.name == "b" and doc.federation.name == "fed" and doc.superlink.auth_key == "auth.key"
    site = load_site(p)
    assert site.data_root == "/data/b" and site.modality == "CT" and site.num_workers == 0
    assert site.with_root("/elsewhere").datalist_path == "/elsewhere/dataset.json"
    p.write_text(p.read_text() + "\n[superlnk]\naddress = \"x\"\n")
    with pytest.raises(ConfigError, match=r"unknown table \[superlnk\].*'superlink'"):
        load_site(p)
    p.write_text('[site]\nmodality = "CT"\n')
    with pytest.raises(ConfigError, match=r"\[site\] name: required key is missing"):
        load_site(p)


def test_fl_common_config_imports_no_torch():
    import subprocess
    import sys
    code = "import sys, fl_common.config; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
