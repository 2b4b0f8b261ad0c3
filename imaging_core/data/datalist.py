"""Medical Segmentation Decathlon style ``dataset.json`` datalists.

Paths are relative to the site root (the folder holding dataset.json unless
given); a path that escapes the root is refused, so a datalist can never make
a site read files outside the data it agreed to use.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImagingError

SPLITS = ("training", "validation", "test")


@dataclass(frozen=True)
class Case:
    case_id: str
    split: str
    image: Path
    label: Path | None


@dataclass
class Datalist:
    path: Path
    root: Path
    name: str
    labels: dict[int, str]
    modality: dict[str, str]
    cases: list[Case] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 2

    def split(self, name: str) -> list[Case]:
        return [c for c in self.cases if c.split == name]


def _resolve_inside(root: Path, rel: str, dl_path: Path, where: str) -> Path:
    if not isinstance(rel, str) or not rel:
        raise ImagingError(dl_path, f"{where}: path must be a non-empty string, got {rel!r}")
    if os.path.isabs(rel):
        raise ImagingError(dl_path, f"{where}: absolute path '{rel}' not allowed; use a path relative to the site root")
    p = (root / rel).resolve()
    if not p.is_relative_to(root.resolve()):
        raise ImagingError(dl_path, f"{where}: path '{rel}' points outside the site root {root}")
    return p


def _case_id(image_rel: str) -> str:
    name = Path(image_rel.rstrip("/")).name
    for suf in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def load_datalist(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Datalist:
    """Parse and validate the structure of a datalist (not the files it names)."""
    path = Path(path)
    if not path.is_file():
        raise ImagingError(path, "datalist not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImagingError(path, f"not valid JSON ({e})") from None
    if not isinstance(doc, dict):
        raise ImagingError(path, "datalist must be a JSON object with 'training'/'validation'/'test' lists")
    root = Path(root) if root is not None else path.parent
    labels_raw = doc.get("labels", {"0": "background", "1": "foreground"})
    try:
        labels = {int(k): str(v) for k, v in labels_raw.items()}
    except (ValueError, AttributeError):
        raise ImagingError(path, f"'labels' must map integer strings to names, got {labels_raw!r}") from None
    if 0 not in labels:
        raise ImagingError(path, "'labels' must include 0 (background)")
    cases: list[Case] = []
    seen: set[str] = set()
    if not any(s in doc for s in SPLITS):
        raise ImagingError(path, "datalist has none of the lists 'training', 'validation', 'test'")
    for split in SPLITS:
        items = doc.get(split, [])
        if not isinstance(items, list):
            raise ImagingError(path, f"'{split}' must be a list")
        for i, item in enumerate(items):
            where = f"{split}[{i}]"
            if isinstance(item, str):  # MSD test lists are bare image paths
                item = {"image": item}
            if not isinstance(item, dict) or "image" not in item:
                raise ImagingError(path, f"{where}: expected an object with an 'image' path")
            image = _resolve_inside(root, item["image"], path, where)
            label = item.get("label")
            label = _resolve_inside(root, label, path, where) if label is not None else None
            if split == "training" and label is None:
                raise ImagingError(path, f"{where}: training case has no 'label'")
            cid = str(item.get("id") or _case_id(item["image"]))
            if cid in seen:
                raise ImagingError(path, f"{where}: duplicate case id '{cid}'")
            seen.add(cid)
            cases.append(Case(cid, split, image, label))
    return Datalist(path, root, str(doc.get("name", root.name)), labels,
                    {str(k): str(v) for k, v in doc.get("modality", {}).items()}, cases)


def write_datalist(path: str | os.PathLike, name: str, labels: dict[int, str],
                   modality: dict[str, str], splits: dict[str, list[dict]]) -> Path:
    """Write a dataset.json atomically (used by the example generator)."""
    from ..io.atomic import write_bytes_atomic
    doc = {"name": name, "labels": {str(k): v for k, v in sorted(labels.items())},
           "modality": modality, **splits}
    write_bytes_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
    return Path(path)
