"""The typed schema of every imaging table of a federation TOML:
[model], [train], [labels], [preprocess] (+ per-modality intensity rules),
[sampling], [postprocess] and [augment].

This is the ONLY place imaging defaults live: presets, the bundle contract,
the trainer and the evaluation read these objects, never a ``.get(key, default)``.
Every table refuses unknown keys, wrong types (strict: "three" is no int) and
out-of-range values; ``parse`` turns the first problem into one ConfigError
naming the file, the table and the key (imaging_core.config_errors).

Torch-free on purpose: fl_common imports it.
"""
from __future__ import annotations

import os
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .augment_presets import AUGMENT_ALIASES, AUGMENT_PRESETS
from .config_errors import ConfigError, from_validation

AMP_MODES = ("auto", "bf16", "fp16", "none", "off")
INTENSITY_KINDS = ("window", "zscore", "percentile")


class Table(BaseModel):
    """A TOML table: strict types, unknown keys refused, read-only once loaded."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Prob = Annotated[float, Field(ge=0.0, le=1.0)]
Vec3f = Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=3, max_length=3)]
Vec3i = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=3, max_length=3)]


class ModelTable(Table):
    """[model]: the UNet3D (imaging_core.nets.unet3d) of the federation."""
    name: Literal["unet3d", "unet", "UNet3D", "small", "small_unet"] = "unet3d"
    channels: list[Annotated[int, Field(ge=1)]] = Field(default=[8, 16, 32, 64], min_length=2)
    strides: list[Annotated[int, Field(ge=1)]] = Field(default=[2, 2, 2], min_length=1)
    num_res_units: Annotated[int, Field(ge=0)] = 1
    norm: Literal["instance", "batch"] = "instance"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    act: str = "prelu"
    kernel_size: Annotated[int, Field(ge=1)] = 3
    up_kernel_size: Annotated[int, Field(ge=1)] = 3
    bias: bool = True
    channels_last: bool = True

    @model_validator(mode="after")
    def _levels(self):
        if len(self.strides) != len(self.channels) - 1:
            raise ValueError(f"strides needs one entry fewer than channels ({len(self.channels)} channels, "
                             f"{len(self.strides)} strides)")
        return self

    def net_kwargs(self) -> dict:
        """The UNet3D keyword arguments (minus in/out channels)."""
        return self.model_dump(exclude={"name"})


class TrainTable(Table):
    """[train]: the loss and the local trainer's settings (imaging_core.train.trainer)."""
    loss: str = "dicece"
    loss_args: dict[str, Any] = {}
    epochs: Annotated[int, Field(ge=1)] = 10
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-5
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["poly", "cosine", "constant"] = "poly"
    warmup_epochs: Annotated[int, Field(ge=0)] = 0
    amp: Literal["auto", "bf16", "fp16", "none", "off"] | None = "auto"
    grad_accum: Annotated[int, Field(ge=1)] = 1
    cases_per_batch: Annotated[int, Field(ge=1)] = 1   # each case yields samples_per_case patches
    patches_per_step: Annotated[int, Field(ge=0)] = 0  # >0: optimizer steps of this many patches
    val_every: Annotated[int, Field(ge=1)] = 1
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5   # sliding-window overlap (evaluation)
    sw_batch_size: Annotated[int, Field(ge=1)] = 4
    seed: int = 0
    prox_mu: Annotated[float, Field(ge=0)] = 0.0          # FedProx proximal term weight
    best_metric: str = "dice_fg_mean"
    num_workers: Annotated[int, Field(ge=0)] = 0
    clip_grad: Annotated[float, Field(gt=0)] | None = 12.0

    @model_validator(mode="after")
    def _steps(self):
        if self.patches_per_step and self.grad_accum != 1:
            raise ValueError("patches_per_step cannot be combined with grad_accum")
        return self

    @classmethod
    def from_dict(cls, d: dict, path=None) -> "TrainTable":
        return parse(cls, d, path, "train")

    def with_(self, **override) -> "TrainTable":
        """A copy with ``override`` applied and validated again."""
        return parse(type(self), {**self.model_dump(), **override}, None, "train")


class WindowRule(Table):
    kind: Literal["window"] = "window"
    a_min: float
    a_max: float
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True


class ZScoreRule(Table):
    """Per-image z-score. ``mask`` picks the voxels of the statistics: "all", "nonzero"
    (MONAI's nonzero=True: zero voxels stay 0, so zero-filled air sits at the tissue
    mean) or "head" (a robust head mask; every voxel outside it becomes ``outside``,
    so zero-filled and noisy air look the same). ``outside`` is below tissue on
    purpose: crop-to-foreground can then still find the head by threshold.
    "head" is the default: sites differ in how they fill the air, and bundles ship it
    as code (imaging_core/bundle/scripts.py). Pooled, 6 epochs on sites_example it
    also did better there (held-out organ Dice 0.863 vs 0.803 with "nonzero")."""
    kind: Literal["zscore"] = "zscore"
    mask: Literal["nonzero", "all", "head"] = "head"
    outside: float = -3.0

    @model_validator(mode="before")
    @classmethod
    def _old_nonzero(cls, v):
        # `nonzero = true/false` of older TOMLs and bundles: the same as mask "nonzero"/"all"
        if isinstance(v, dict) and "nonzero" in v:
            if "mask" in v:
                raise ValueError("give mask or the older nonzero, not both")
            if not isinstance(v["nonzero"], bool):
                raise ValueError("nonzero must be true or false (or use mask = 'nonzero' | 'all' | 'head')")
            v = {k: x for k, x in v.items() if k != "nonzero"} | {"mask": "nonzero" if v["nonzero"] else "all"}
        return v


class PercentileRule(Table):
    kind: Literal["percentile"] = "percentile"
    lower: Annotated[float, Field(ge=0, le=100)] = 0.5
    upper: Annotated[float, Field(ge=0, le=100)] = 99.5
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    relative: bool = False


IntensityRule = Annotated[Union[WindowRule, ZScoreRule, PercentileRule], Field(discriminator="kind")]
DEFAULT_INTENSITY = {"CT": {"kind": "window", "a_min": -200.0, "a_max": 300.0}, "MR": {"kind": "zscore"}}


class PreprocessTable(Table):
    """[preprocess]: the deterministic, cached part of the pipeline (one data contract)."""
    orientation: str = "RAS"
    pixdim: Vec3f = [1.5, 1.5, 2.0]
    crop_foreground: bool = True
    foreground_threshold: float = 0.05
    margin: Annotated[int, Field(ge=0)] = 2
    intensity: dict[str, IntensityRule] = Field(default_factory=lambda: {
        "CT": WindowRule(**DEFAULT_INTENSITY["CT"]), "MR": ZScoreRule(**DEFAULT_INTENSITY["MR"])})

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v: str) -> str:
        v = v.upper()
        axes = [{"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}.get(c) for c in v]
        if len(v) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
            raise ValueError("orientation must be 3 axis codes, one of L/R, P/A, I/S each (e.g. 'RAS')")
        return v

    @field_validator("intensity", mode="before")
    @classmethod
    def _rules(cls, v):
        # a file's modality rule replaces that modality's default; the others stay;
        # a rule without "kind" is a window (the CT convention)
        if not isinstance(v, dict):
            return v
        out = {m: dict(r) for m, r in DEFAULT_INTENSITY.items()}
        for mod, rule in v.items():
            out[mod] = {"kind": "window", **rule} if isinstance(rule, dict) else rule
        return out

    def crop_threshold(self, modality: str) -> float:
        """The foreground threshold for ``modality``: z-scored MR has its air well below 0;
        with a head mask the air is exactly ``outside``, so just above it keeps dark
        tissue at the head's edge (CSF) inside the crop."""
        rule = self.intensity[modality]
        if rule.kind != "zscore":
            return float(self.foreground_threshold)
        return rule.outside + 0.5 if rule.mask == "head" else -0.5


class SamplingTable(Table):
    """[sampling]: training patches (patch_size is also the sliding-window ROI)."""
    patch_size: Vec3i = [96, 96, 96]
    samples_per_case: Annotated[int, Field(ge=1)] = 4
    mode: Literal["classes", "posneg"] = "classes"
    class_ratios: list[Annotated[float, Field(ge=0)]] | None = None
    pos: Annotated[float, Field(ge=0)] = 1.0
    neg: Annotated[float, Field(ge=0)] = 1.0


class PostprocessTable(Table):
    """[postprocess]: the chain run before every evaluation (imaging_core.postprocess.chain
    checks the steps and their options; here only the table's shape)."""
    chain: list[str | dict[str, Any]] = []
    classes: list[int] | None = None
    connectivity: Literal[6, 18, 26] | None = None
    crf: dict[str, Any] | None = None
    largest_component: dict[str, Any] | None = None
    keep_largest: dict[str, Any] | None = None
    remove_small: dict[str, Any] | None = None

    def chain_config(self) -> dict:
        """The dict imaging_core.postprocess.chain takes."""
        return self.model_dump(exclude_none=True)


Pair = Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=2, max_length=2)]


class AugmentTable(Table):
    """[augment]: per-patch random augmentation (imaging_core.transforms.presets.build_augment).

    ``preset`` supplies every key the file leaves out (AUGMENT_PRESETS); a key in
    the file wins. Ranges are (low, high); factors multiply (1 = unchanged);
    rotate_range is radians each way; elastic spacing/magnitude are voxels.
    """
    preset: Literal["nnunet", "light"] = "nnunet"
    flip_prob: Prob                    # per axis
    rot90_prob: Prob
    rotate_prob: Prob
    rotate_range: Annotated[float, Field(ge=0, le=3.1416)]
    scale_prob: Prob
    scale_range: Pair
    elastic_prob: Prob
    elastic_spacing: Pair              # control-point spacing of the smooth field
    elastic_magnitude: Pair            # largest displacement
    noise_prob: Prob
    noise_std: Annotated[float, Field(ge=0)]   # sigma ~ U(0, noise_std)
    blur_prob: Prob
    blur_sigma: Pair
    brightness_prob: Prob
    brightness_range: Pair
    shift_prob: Prob
    shift_range: Annotated[float, Field(ge=0)]
    contrast_prob: Prob
    contrast_range: Pair
    lowres_prob: Prob
    lowres_zoom: Pair
    gamma_prob: Prob
    gamma_invert_prob: Prob
    gamma_range: Pair
    gamma_retain_stats: bool
    affine_prob: Prob | None = None    # older files: rotate_prob and scale_prob at once
    intensity_prob: Prob | None = None  # older files: brightness, shift and gamma probabilities

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data):
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "nnunet")
        if preset not in AUGMENT_PRESETS:
            return data  # the Literal reports it
        out = dict(data)
        for alias, targets in AUGMENT_ALIASES.items():
            if out.get(alias) is not None:
                for t in targets:
                    out.setdefault(t, out[alias])
        for k, v in AUGMENT_PRESETS[preset].items():
            out.setdefault(k, v)
        return out

    @model_validator(mode="after")
    def _ranges(self):
        for name in ("scale_range", "elastic_spacing", "elastic_magnitude", "blur_sigma", "brightness_range",
                     "contrast_range", "lowres_zoom", "gamma_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {[lo, hi]}")
            if lo <= 0 and name not in ("elastic_magnitude", "blur_sigma"):
                raise ValueError(f"{name} must be positive, got {[lo, hi]}")
        if self.lowres_zoom[1] > 1:
            raise ValueError(f"lowres_zoom must lie within (0, 1], got {self.lowres_zoom}")
        return self


DEFAULT_LABELS = {0: "background", 1: "foreground"}
AUTO_PREPROCESS = "auto"   # [preprocess] = "auto" (and no [preprocess] table): the run's plan decides


class ImagingConfig(Table):
    """Every imaging table of a federation, defaults filled in."""
    model: ModelTable = ModelTable()
    train: TrainTable = TrainTable()
    labels: dict[int, str] = Field(default_factory=lambda: dict(DEFAULT_LABELS))
    preprocess: PreprocessTable | None = None  # None: "auto", the run's plan decides (issue 16)
    sampling: SamplingTable = SamplingTable()
    postprocess: PostprocessTable = PostprocessTable()
    augment: AugmentTable = AugmentTable()

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys(cls, v):
        if not isinstance(v, dict):
            return v
        try:
            labels = {int(k): v[k] for k in v}
        except (TypeError, ValueError):
            raise ValueError("keys must be integers (0 = background, 1, 2, ...)") from None
        if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
            raise ValueError(f"label values must be 0..K-1 with K >= 2, got {sorted(labels)}")
        return {k: labels[k] for k in sorted(labels)}

    @field_validator("preprocess", mode="before")
    @classmethod
    def _auto(cls, v):  # "auto" -> None, the marker (TOML has no null: only code passes None, meaning it)
        if isinstance(v, str) and v != AUTO_PREPROCESS:
            raise ValueError(f'must be a table or the string "{AUTO_PREPROCESS}" (the run\'s plan)')
        return None if isinstance(v, str) else v

    @property
    def preprocess_auto(self) -> bool:
        return self.preprocess is None

    def preprocess_table(self, what: str = "this command") -> PreprocessTable:
        """The concrete [preprocess]; "auto" without a plan is one ConfigError naming the file."""
        if self.preprocess is None:
            raise ConfigError(getattr(self, "path", None) or None, "preprocess", None, f'is "auto" and {what} '
                              "has no plan: run `fedvox plan --federation FILE --run-dir R --memory-gb N` first "
                              "and pass --plan R/plan.json, or give an explicit [preprocess] table")
        return self.preprocess

    def with_preprocess(self, table: "PreprocessTable | dict") -> "ImagingConfig":
        """A copy whose [preprocess] is ``table`` (a plan's, validated again): "auto" resolved."""
        data = table.model_dump() if isinstance(table, PreprocessTable) else table
        return self.model_copy(update={"preprocess": parse(PreprocessTable, data, getattr(self, "path", None) or None,
                                                           "preprocess")})

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def roi(self) -> tuple[int, int, int]:
        return tuple(self.sampling.patch_size)

    def updated(self, changes: dict):
        """A copy with ``changes`` ({"model": {"channels": [...]}, ...}) merged in
        table by table, validated again (the objects themselves are read-only)."""
        return parse(type(self), _merge(self.model_dump(), changes), getattr(self, "path", None))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


M = TypeVar("M", bound=BaseModel)


def parse(cls: type[M], data: Any, path: str | os.PathLike | None = None, table: str | None = None) -> M:
    """``cls`` from ``data``; the first problem as one ConfigError (file, table, key).
    ``table`` None: ``data`` is a whole file whose first level are tables."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, path, cls, table) from None


def imaging_config(doc: dict, path: str | os.PathLike | None = None) -> ImagingConfig:
    """The imaging tables of a parsed TOML document (other tables are refused)."""
    return parse(ImagingConfig, doc, path)


__all__ = ["AMP_MODES", "AUGMENT_ALIASES", "AUGMENT_PRESETS", "AUTO_PREPROCESS", "INTENSITY_KINDS", "AugmentTable",
           "ConfigError", "ImagingConfig", "ModelTable", "PercentileRule", "PostprocessTable", "PreprocessTable",
           "SamplingTable", "Table", "TrainTable", "WindowRule", "ZScoreRule", "imaging_config", "parse"]
