"""The [policy] table of site.toml: typed, strict, and satisfied by the example federation."""
from __future__ import annotations

import pytest

from fl_common import keys as K
from fl_common.config import PolicyTable, example_federation_path, load_federation, read_site_file
from imaging_core.config_errors import ConfigError


def test_defaults_require_masking_and_let_no_count_or_loss_leave():
    pol = PolicyTable()
    assert pol.require_secure_aggregation and pol.min_val_cases >= 3
    assert set(pol.metrics) == {"dice_fg_mean", "dice_<c>", "hd95_<c>"}


def test_a_misspelt_policy_key_is_one_error_naming_file_table_and_key(tmp_path):
    p = tmp_path / "site.toml"
    p.write_text('[site]\nname = "x"\n\n[policy]\nrequire_secure_agregation = false\n')
    with pytest.raises(ConfigError) as e:
        read_site_file(p)
    assert str(p) in str(e.value) and "[policy]" in str(e.value) and "require_secure_aggregation" in str(e.value)


@pytest.mark.parametrize("line", ["max_lr = -1.0", "max_local_epochs = 0", 'metrics = ["dice_<case>"]',
                                  "require_secure_aggregation = 1"])
def test_bad_policy_values_are_refused(tmp_path, line):
    p = tmp_path / "site.toml"
    p.write_text(f'[site]\nname = "x"\n\n[policy]\n{line}\n')
    with pytest.raises(ConfigError, match=r"\[policy\]"):
        read_site_file(p)


def test_every_round_the_example_federation_sends_is_within_every_example_sites_policy():
    from fl_client.policy import check_config
    from fl_server.strategy import site_lr, site_round_config
    fed = load_federation(example_federation_path(), data_base="/nonexistent")
    fl = fed.federation
    for site in fed.sites:
        pol = read_site_file(site.config_path).policy
        for r in range(1, fl.rounds + 1):
            cfg = {K.SERVER_ROUND: r, K.RUN_ID: "20261201-120000", K.LR: site_lr(fed.train, fl.rounds,
                                                                                  fl.local_epochs, r),
                   **site_round_config(fl)}
            assert check_config(pol, cfg, K.MSG_TRAIN) == r
            assert check_config(pol, cfg, K.MSG_EVALUATE) == r
        final = {K.SERVER_ROUND: fl.rounds + 1, K.RUN_ID: "x", K.LR: 1e-3, **site_round_config(fl)}
        assert check_config(pol, final, K.MSG_EVALUATE) == fl.rounds + 1
