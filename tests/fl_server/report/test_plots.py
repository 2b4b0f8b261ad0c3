"""The report's figures show the series the run record holds."""
from __future__ import annotations

import json




def test_plots_have_expected_series(run_dir, tmp_path, fab):
    from fl_server import report as R
    run = R.load_run(run_dir)
    base = R.load_baseline(fab.baseline(tmp_path / "pooled"))
    rows = R.comparison_rows(run, [base])
    labels = run.labels

    fig = R.plot_learning_curves(run)
    dice_ax, loss_ax = fig.axes[:2]
    # held-out global + per site (global, local-only)
    assert len(dice_ax.get_lines()) == 1 + 2 * len(fab.SITES)
    held = dice_ax.get_lines()[0]
    assert list(held.get_xdata()) == list(range(fab.ROUNDS + 1))
    site_line = dice_ax.get_lines()[1]  # global on a site: models after rounds 0..fab.ROUNDS
    assert list(site_line.get_xdata()) == list(range(fab.ROUNDS + 1))
    assert len(loss_ax.get_lines()) == 2 * len(fab.SITES)

    fig = R.plot_local_vs_global(rows, labels)
    assert len(fig.axes) == 2  # one panel per foreground structure
    for ax in fig.axes:
        assert len(ax.containers) == 4  # local-only, global final, global best, pooled baseline
        assert all(len(c) == len(fab.SITES) for c in ax.containers)
        assert [t.get_text() for t in ax.get_xticklabels()] == fab.SITES

    fig = R.plot_hd95_box(rows, labels)
    for ax in fig.axes:
        assert len(ax.get_xticklabels()) == 4  # global final, global best, local-only, pooled
    # the missed structure is counted, not dropped silently
    lesion_ax = fig.axes[1]
    assert any("missed" in t.get_text() for t in lesion_ax.get_xticklabels())

    figures = json.loads(json.dumps(R.series_count(R.plot_learning_curves(run))))
    assert figures["axes"][0]["lines"] == 1 + 2 * len(fab.SITES)


