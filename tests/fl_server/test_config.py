"""Federation TOML loading: defaults, and one error naming the file for bad input."""
import pytest

from fl_server.config import example_federation_path, load_federation
from imaging_core.errors import ImagingError


def _write(tmp_path, train: str, labels: str = '0 = "background"\n1 = "organ"\n', sites: bool = True):
    (tmp_path / "a.toml").write_text('[site]\nname = "a"\nmodality = "CT"\n')
    text = f"[federation]\nrounds = 2\n\n[train]\n{train}\n[labels]\n{labels}\n"
    if sites:
        text += '[[sites]]\nconfig = "a.toml"\n'
    path = tmp_path / "federation.toml"
    path.write_text(text)
    return path


def test_example_federation_loads_with_its_site_recipe():
    fed = load_federation(example_federation_path(), data_base="/data")
    assert [s["name"] for s in fed["sites"]] == ["hospital_a", "hospital_b", "hospital_c"]
    assert fed["sites"][0]["data_root"] == "/data/hospital_a"
    assert fed["train"]["patches_per_step"] == 2


def test_defaults_fill_what_the_file_leaves_out(tmp_path):
    fed = load_federation(_write(tmp_path, "lr = 0.01\n"))
    assert fed["train"]["lr"] == 0.01 and fed["train"]["loss"] == "dicece"
    assert fed["federation"]["rounds"] == 2 and fed["federation"]["strategy"] == "fedavg"
    assert fed["labels"] == {0: "background", 1: "organ"}


@pytest.mark.parametrize("train, message", [
    ("patches_per_stp = 2\n", r"unknown \[train\] keys: \['patches_per_stp'\]"),
    ("patches_per_step = -1\n", "patches_per_step must be >= 0"),
    ("patches_per_step = 2\ngrad_accum = 2\n", "cannot be combined with grad_accum"),
])
def test_bad_train_table_is_one_error_naming_the_file(tmp_path, train, message):
    path = _write(tmp_path, train)
    with pytest.raises(ImagingError, match=message) as e:
        load_federation(path)
    assert str(path) in str(e.value)


def test_other_bad_federations_name_the_file(tmp_path):
    with pytest.raises(ImagingError, match="config file not found"):
        load_federation(tmp_path / "missing.toml")
    with pytest.raises(ImagingError, match="keys must be integers"):
        load_federation(_write(tmp_path, "", labels='bg = "background"\n'))
    with pytest.raises(ImagingError, match="no \\[\\[sites\\]\\] listed"):
        load_federation(_write(tmp_path, "", sites=False))
