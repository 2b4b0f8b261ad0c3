"""Federation and site TOML files, read through one typed schema.

Both federation sides read these, so they live here once: the imaging tables
come from imaging_core.config (the only imaging defaults), the FL tables and
site.toml are defined below. An unknown table or key, a wrong type or a bad
value is one ConfigError naming the file, the table and the key.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from imaging_core.config import ImagingConfig, Table, parse
from imaging_core.config_errors import ConfigError
from imaging_core.errors import ImagingError
from .kit import KIT_AUTH_KEY, KIT_CA
from .secagg.threshold import DEFAULT_COLLUDING_SITES

STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi")

PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]


class FederationTable(Table):
    """[federation]: the round loop, the strategy and secure aggregation."""
    name: str = "federation"
    seed: int = 0
    rounds: PosInt = 3
    strategy: Literal[STRATEGIES] = "fedavg"
    min_sites: PosInt = 2
    local_epochs: PosInt = 1
    prox_mu: Annotated[float, Field(ge=0)] = 0.01   # FedProx only
    local_baseline: bool = True
    keep_site_optimizer: bool = False
    best_metric: str = "dice_fg_mean"
    train_timeout: PosFloat = 900.0
    eval_timeout: PosFloat = 600.0
    # secure aggregation: None = the smallest safe threshold for the roster
    secagg_threshold: Annotated[int, Field(ge=2)] | None = None
    secagg_clip: PosFloat = 4.0
    secagg_max_weight: PosFloat = 1000.0
    # sites that may collude with the server: the threshold satisfies 2t > n + colluding_sites
    # (Bonawitz et al. 2017). 1 = a lone curious site (e.g. the coordinator's own) is assumed;
    # each site enforces its own bound too. With 3 sites this means t = 3 (no dropout).
    colluding_sites: Annotated[int, Field(ge=0)] = DEFAULT_COLLUDING_SITES
    # server optimiser (fl_server.strategy.ServerOptimizer); each acts for some strategies
    server_lr: PosFloat = 1.0          # fedavg, fedprox, fedavgm
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9   # fedavgm
    eta: PosFloat = 1e-2               # fedadam, fedyogi
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: PosFloat = 1e-3

    def optimizer_knobs(self) -> dict:
        return {k: getattr(self, k) for k in ("server_lr", "momentum", "eta", "beta1", "beta2", "tau")}


class SiteRef(Table):
    """A [[sites]] / [coordinator] entry: where that site's TOML is."""
    config: str


class SiteTable(Table):
    """site.toml's [site] table."""
    name: Annotated[str, Field(min_length=1)]
    data_root: str | None = None        # default: the site's name; relative to the data base
    datalist: str = "dataset.json"      # relative to data_root
    modality: Literal["CT", "MR"] = "CT"
    device: str = "cpu"
    num_workers: Annotated[int, Field(ge=0)] = 0


class SiteFederationTable(Table):
    """site.toml's [federation] table (a startup kit names its federation)."""
    name: str = ""


class SuperlinkTable(Table):
    """site.toml's [superlink] table (a startup kit's connection; paths relative to the file)."""
    address: str = ""
    root_certificates: str = KIT_CA
    auth_key: str = KIT_AUTH_KEY


# The metric names a site may let leave ([policy] metrics); ``<c>`` is a class
# index. Validation metrics carry a "global/" or "local/" prefix on the wire.
POLICY_METRICS = ("dice_fg_mean", "dice_<c>", "hd95_<c>",   # aggregate scores
                  "missed_<c>", "num_val",                  # case counts
                  "train_loss", "local_train_loss",         # losses (a membership signal)
                  "train_seconds", "patches")               # grow with the number of cases


class PolicyTable(Table):
    """site.toml's [policy]: what this site agrees to answer (fl_client.policy enforces it
    in the ClientApp shim). Only the site's own file sets it; the server cannot."""
    require_secure_aggregation: bool = True   # no unmasked update leaves unless the site opts out here
    max_rounds: PosInt = 100
    max_local_epochs: PosInt = 10
    max_lr: PosFloat = 0.1                    # lr must be > 0 and <= this
    max_prox_mu: Annotated[float, Field(ge=0)] = 1.0
    max_cases_per_batch: PosInt = 16
    max_patches_per_step: PosInt = 16
    min_val_cases: PosInt = 3                 # fewer validation cases: no validation metrics at all
    metrics: list[Literal[POLICY_METRICS]] = ["dice_fg_mean", "dice_<c>", "hd95_<c>"]
    # consent to cross-site evaluation of this site's local-only model: true sends its
    # WEIGHTS to the coordinator, which sends them on to every other site (and may keep them)
    share_local_model: bool = False
    # other models this site evaluates after the final one (cross-site matrix), each once
    max_cross_site_models: Annotated[int, Field(ge=0)] = 8
    # per-case values (no case ids, shuffled by a secret permutation per run) of the allowed
    # metrics, in the cross-site replies only, and only where "num_val" is allowed (a list's
    # length is the case count): finer than any mean, so off unless the site opts in
    cross_site_per_case: bool = False
    # new runs this site trains in per 24 h: each run is one more local training (a new
    # local-only model) and one more final stage of evaluations (fl_client.release_ledger)
    max_runs_per_day: PosInt = 4
    # plan-stage fingerprint answers per 24 h, one per run id (a repeat gets the same bytes)
    max_fingerprints_per_day: PosInt = 4
    # the server's [preprocess] (the plan's, issue 16) within these bounds: a 0.01 mm grid or a
    # huge crop margin would make the site's cache and training exhaust its disk and memory
    min_pixdim_mm: PosFloat = 0.25
    max_pixdim_mm: PosFloat = 20.0
    max_margin: Annotated[int, Field(ge=0)] = 64


class TrustTable(Table):
    """[trust]: what the site itself pinned (`fedvox site trust`). It is only
    honoured in the site's own key directory (fl_client.enroll), never in a
    file the coordinator wrote."""
    roster_fingerprint: Annotated[str, Field(pattern=r"^[A-Z2-7]{4}(-[A-Z2-7]{4}){7}$")]


class SiteFile(Table):
    """A whole site.toml (or the site's own trust.toml: [site] name + [trust])."""
    site: SiteTable
    federation: SiteFederationTable = SiteFederationTable()
    superlink: SuperlinkTable = SuperlinkTable()
    policy: PolicyTable = PolicyTable()
    trust: TrustTable | None = None


class SiteConfig(Table):
    """A site as the code uses it: the [site] table with its paths resolved."""
    name: str
    data_root: str
    datalist: str
    modality: Literal["CT", "MR"]
    device: str
    num_workers: int
    config_path: str
    datalist_path: str

    def with_root(self, root: str | os.PathLike) -> "SiteConfig":
        """The same site with its data somewhere else (``--data-root``)."""
        root = Path(root)
        return self.model_copy(update={"data_root": str(root), "datalist_path": str(root / self.datalist)})


class Federation(ImagingConfig):
    """A federation TOML: the imaging tables plus [federation], its sites and coordinator."""
    federation: FederationTable = FederationTable()
    sites: list[SiteConfig] = []
    coordinator: SiteConfig | None = None
    path: str = ""

    @property
    def all_sites(self) -> list[SiteConfig]:
        """The training sites and (last) the coordinator."""
        return [*self.sites, *([self.coordinator] if self.coordinator else [])]


def read_toml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ImagingError(path, "config file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ImagingError(path, f"invalid TOML ({e})") from None


def read_site_file(path: str | os.PathLike) -> SiteFile:
    """site.toml, checked (the one parser of it: worker, startup kit, provisioning)."""
    return parse(SiteFile, read_toml(path), path)


def load_site(path: str | os.PathLike, data_base: str | os.PathLike | None = None) -> SiteConfig:
    """A site config; ``data_root`` is resolved against ``data_base`` (default: the
    file's directory) if relative."""
    path = Path(path)
    site = read_site_file(path).site
    root = Path(site.data_root if site.data_root is not None else site.name)
    if not root.is_absolute():
        root = Path(data_base if data_base is not None else path.parent) / root
    return SiteConfig(name=site.name, data_root=str(root), datalist=site.datalist, modality=site.modality,
                      device=site.device, num_workers=site.num_workers, config_path=str(path),
                      datalist_path=str(root / site.datalist))


def _ref(path: Path, entry, table: str) -> str:
    return parse(SiteRef, entry, path, table).config


def load_federation(path: str | os.PathLike, data_base: str | os.PathLike | None = None,
                    require_sites: bool = True) -> Federation:
    """The federation TOML with defaults, its sites' configs loaded.

    A site only needs the shared data contract and model (require_sites=False):
    its startup kit's copy need not list the other sites."""
    path = Path(path)
    doc = read_toml(path)
    sites = doc.pop("sites", [])
    if not isinstance(sites, list):
        raise ConfigError(path, "sites", None, "must be an array of tables ([[sites]] config = \"...\")")
    coord = doc.pop("coordinator", None)
    refs = [_ref(path, s, "sites") for s in sites]
    coord_ref = _ref(path, coord, "coordinator") if coord is not None else None
    fed = parse(Federation, doc, path)  # the tables themselves first: the common mistakes are here
    if not refs and require_sites:
        raise ConfigError(path, None, None, "no [[sites]] listed")
    loaded = [load_site(path.parent / r, data_base) for r in refs]
    coordinator = load_site(path.parent / coord_ref, data_base) if coord_ref else None
    return fed.model_copy(update={"sites": loaded, "coordinator": coordinator, "path": str(path)})


def example_federation_path() -> Path:
    import sites_example
    return Path(sites_example.__file__).parent / "federation.toml"
