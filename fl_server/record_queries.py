"""What a run record says: the read-only queries of RunRecord (fl_server.records
holds the files, their names and every write; this mixin only reads what it loaded:
``self.info``, ``self.rounds``, ``self.sites``, the model and checkpoint paths)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from fl_common.keys import CENTRAL, GLOBAL, LOCAL, TRAIN, VAL
from imaging_core.errors import ImagingError
from imaging_core.io.tables import read_json

DEFAULT_BEST_METRIC = "dice_fg_mean"
CROSS_SITE, FINAL_SITES, EVENTS = "cross_site.json", "final_sites.json", "events.jsonl"


def site_row_model_round(row_round: int) -> int:
    """The global model a round-``t`` site row evaluates: the one round t started from."""
    return int(row_round) - 1


def strip_prefix(row: dict, prefix: str) -> dict:
    """The ``prefix``-ed entries of a row, without the prefix."""
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RunQueries:
    # ----- what the run says --------------------------------------------------
    @property
    def best_metric(self) -> str:
        return str(self.info.get("best_metric") or DEFAULT_BEST_METRIC)

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.info.get("labels") or {"0": "background",
                                                                        "1": "foreground"}).items()}

    @property
    def federation_path(self) -> str | None:
        return self.info.get("federation_path")

    @property
    def data_base(self) -> str | None:
        return self.info.get("data_base")

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id") or self.dir.name)

    @property
    def final_sites(self) -> dict:
        return read_json(self.dir / FINAL_SITES, {"sites": [], "failures": []})

    @property
    def cross_site(self) -> list[dict]:
        """The cross-site matrix rows (model x evaluation set), [] when the run has none."""
        return list(read_json(self.dir / CROSS_SITE, {}).get("rows", []))

    @property
    def cross_site_failures(self) -> list[dict]:
        """Cross-site requests that failed (not refusals): {"model", "site", "error"}."""
        return list(read_json(self.dir / CROSS_SITE, {}).get("failures", []))

    @property
    def cross_site_consent(self) -> dict[str, bool]:
        """Per site: did it consent to its local-only model being evaluated on the other sites."""
        return {str(k): bool(v) for k, v in read_json(self.dir / CROSS_SITE, {}).get("consent", {}).items()}

    @property
    def site_names(self) -> list[str]:
        return sorted({r["site"] for r in self.sites})

    def ok_rounds(self) -> list[int]:
        """Rounds that produced a global model (round 0, the initial one, included)."""
        return sorted(r["round"] for r in self.rounds if r.get("status", "ok") == "ok")

    def failed_rounds(self) -> list[dict]:
        return [r for r in self.rounds if r.get("status") == "failed"]

    @property
    def final_round(self) -> int:
        """The round after which the final global model was taken (0: no round succeeded)."""
        ok = self.ok_rounds()
        return ok[-1] if ok else 0

    def round_row(self, r: int) -> dict:
        return next((x for x in self.rounds if x["round"] == r), {})

    def central(self, r: int) -> dict:
        """The coordinator's held-out metrics of the global model after round ``r``."""
        return strip_prefix(self.round_row(r), CENTRAL)

    def central_series(self, metric: str) -> list[tuple[int, float]]:
        """(round, held-out ``metric``) for every round that has a finite value."""
        pts = [(x["round"], x.get(f"{CENTRAL}{metric}")) for x in sorted(self.rounds, key=lambda x: x["round"])]
        return [(r, float(v)) for r, v in pts if _finite(v)]

    def best(self, metric: str | None = None) -> tuple[int, float]:
        """(round, held-out score) of the best global model; always defined.

        Round 0 (the initial model) competes like any other round, ties go to the
        earlier round; without a held-out metric the best is the final model (score NaN).
        A finished run's choice (run.json best_round) is kept as it was made.
        """
        metric = metric or self.best_metric
        if (metric == self.best_metric and self.info.get("best_round") is not None
                and self.info.get("status") != "running"):
            r = int(self.info["best_round"])
            v = self.round_row(r).get(f"{CENTRAL}{metric}")
            return r, float(v) if _finite(v) else math.nan
        vals = self.central_series(metric)
        if not vals:
            return self.final_round, math.nan
        best = max(v for _, v in vals)
        return next((r, v) for r, v in vals if v == best)

    def model_round(self, which: str | int) -> int:
        """The round after which the ``which`` ("best", "final" or a round) global model was taken."""
        if which == "best":
            return self.best()[0]
        if which == "final":
            return self.final_round
        return int(which)

    def model_path(self, which: str | int = "best") -> Path:
        """The state dict of the ``which`` global model.

        "best" after the final round is the final model's file; a round number
        resolves to the best or final file when it is one of them, else to
        that round's checkpoint (flat weights + server state).
        """
        if isinstance(which, int) and not isinstance(which, bool):
            for name in ("best", "final"):
                if which == self.model_round(name) and self.model_file(name).is_file():
                    return self.model_file(name)
            return self.checkpoint_path(which)
        p = self.model_file(which)
        if p.is_file():
            return p
        if which == "best" and self.best()[0] == self.final_round and self.model_file("final").is_file():
            return self.model_file("final")  # the same model
        r = self.model_round(which)
        raise ImagingError(p, f"missing: the {which} global model (after round {r}) was not written "
                           "(the run did not finish, or it predates the round-0 best model)")

    def site_rows_evaluating(self, r: int) -> list[dict]:
        """The per-round site rows whose global-model figures are for the model after round ``r``."""
        return [x for x in self.sites if site_row_model_round(x.get("round", 0)) == r]

    def site_metrics_after(self, r: int) -> dict[str, dict]:
        """Each site's validation metrics ({GLOBAL}... and {LOCAL}..., num_val) for the
        global model after round ``r``.

        For r before the final round the local-only figures are one round further
        (see the module doc); the final evaluation has both models after the last round.
        """
        if r >= self.final_round:
            return {x["site"]: {k: v for k, v in x.items() if k != "site"}
                    for x in self.final_sites.get("sites", [])}
        return {x["site"]: strip_prefix(x, VAL) for x in self.site_rows_evaluating(r)}

    def site_series(self, site: str, key: str, model: str = GLOBAL) -> list[tuple[int, float]]:
        """(model round, value) of ``key`` for one site: the global model's validation
        figures (model after round t-1 for a round-t row) or the local-only
        model's (after t rounds), the final evaluation included, finite values only."""
        rows = sorted((x for x in self.sites if x["site"] == site), key=lambda x: x["round"])
        if model == GLOBAL:
            pts = [(site_row_model_round(x["round"]), x.get(f"{VAL}{GLOBAL}{key}")) for x in rows]
        else:
            pts = [(x["round"], x.get(f"{VAL}{LOCAL}{key}")) for x in rows]
        fin = next((x for x in self.final_sites.get("sites", []) if x["site"] == site), None)
        if fin is not None and self.ok_rounds():
            last = self.final_round
            pts = [p for p in pts if p[0] != last] + [(last, fin.get(f"{model}{key}"))]
        return [(r, float(v)) for r, v in pts if _finite(v)]

    def train_series(self, site: str, key: str) -> list[tuple[int, float]]:
        """(round, value) of a site's training scalar ``key`` (without the train/ prefix)."""
        rows = sorted((x for x in self.sites if x["site"] == site), key=lambda x: x["round"])
        return [(x["round"], float(x[f"{TRAIN}{key}"])) for x in rows if _finite(x.get(f"{TRAIN}{key}"))]

    def events(self, offset: int = 0) -> tuple[list[dict], int]:
        """Events from byte ``offset`` on, and the offset after the last whole line."""
        try:
            with open(self.dir / EVENTS, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return [], offset
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # not ours to crash on: a progress display skips it
        return out, offset + end
