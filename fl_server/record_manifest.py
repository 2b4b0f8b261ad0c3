"""The signed run manifest: what binds a run directory's model files to the coordinator.

run.json's "files" hashes and each checkpoint's .sha256 sidecar catch a corrupt
file, not a swapped one: whoever can write the run directory rewrites them
with the file. So the run record also keeps a manifest, signed with the
provision's run-record key (server/run_record.key; fl_common.kit says why
that key and not the bundle key) and re-signed, atomically, whenever a
checkpoint or model file, the plan or the run's settings are written:

    {"manifest": {"run_id", "rounds", "files": {path: SHA-256},
                  "records": {"plan.json": SHA-256 or null, "rounds.json": ...},
                  "settings": {run.json's fields that shape what an export ships}},
     "algorithm", "signer": the key's fingerprint, "signature"}

Whoever hands a run's model on (`fedvox export`, a resumed round loop) checks
it against the public half before loading (export also run.json's run id, rounds
and settings, the federation config's hash among them, and the records the bundle
carries: the plan and the figures); a mismatch is one ImagingError
naming the file and what differs. The manifest's file name and the records it
covers are the run record's (fl_server.records); this module only signs and checks.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from imaging_core.errors import ImagingError
from imaging_core.io.tables import read_json, write_json


class RecordKey:
    """The run-record key: the private half (``signer``, the server) signs,
    the public half (``verifier``, export) checks. ``path`` names it in errors."""

    def __init__(self, path: Path, private, public):
        self.path, self.private, self.public = path, private, public

    @classmethod
    def signer(cls, path: str | os.PathLike) -> "RecordKey":
        from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG
        path = Path(path)
        if not path.is_file():
            raise ImagingError(path, "missing: this provision directory has no run-record key "
                               "(provisioned before run records were signed; re-provision)")
        try:
            priv = SIG.load_private(path)
        except (OSError, ValueError) as e:
            raise ImagingError(path, f"not a usable run-record key ({e})") from None
        return cls(path, priv, priv.public_key())

    @classmethod
    def verifier(cls, path: str | os.PathLike) -> "RecordKey":
        from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG
        path = Path(path)
        try:
            return cls(path, None, SIG.load_public(path))
        except (OSError, ValueError) as e:
            raise ImagingError(path, f"not a usable run-record public key ({e})") from None

    def sign(self, manifest: dict) -> dict:
        from fl_common.crypto.signing import RUN_RECORD_SIGNATURES
        if self.private is None:
            raise RuntimeError(f"{self.path}: a public key cannot sign")
        return RUN_RECORD_SIGNATURES.sign(self.private, manifest)


def file_sha256(path: Path) -> str | None:
    """SHA-256 of a file's bytes, None when there is no such file."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def build(run_id, rounds, files: dict[str, str], records: dict[str, str | None], settings: dict) -> dict:
    return {"run_id": run_id, "rounds": rounds, "files": dict(sorted(files.items())),
            "records": dict(sorted(records.items())), "settings": dict(sorted(settings.items()))}


def settings_of(info: dict, names: tuple[str, ...]) -> dict:
    """run.json's fields ``names`` as they are now (JSON round-tripped, so a
    writer's tuples compare equal to a reader's lists)."""
    import json
    return json.loads(json.dumps({k: info.get(k) for k in names}))


def write(path: Path, key: RecordKey, manifest: dict) -> None:
    write_json(path, key.sign(manifest))  # atomic: a reader sees the old or the new one, whole


def read_verified(path: Path, key: RecordKey) -> dict:
    """The manifest at ``path`` if ``key`` signed it as it is, else one ImagingError
    naming the file and what is wrong."""
    from fl_common.crypto.signing import RUN_RECORD_SIGNATURES
    if not path.is_file():
        raise ImagingError(path, "missing: this run's record is not signed, so nothing binds its model "
                           "files to the coordinator")
    try:
        doc = read_json(path)
    except UnicodeDecodeError as e:
        raise ImagingError(path, f"not valid JSON ({e})") from None
    try:
        m = RUN_RECORD_SIGNATURES.check(key.public, doc)
    except ValueError as e:
        raise ImagingError(path, f"refused: {e} (verified against {key.path})") from None
    if not all(isinstance(m.get(k), dict) for k in ("files", "records", "settings")):
        raise ImagingError(path, "refused: the signed manifest has no files/records/settings tables "
                           "(signed by a fedvox before run settings were signed; re-run to export)")
    return m


def check_records(run_dir: Path, manifest: dict, info: dict, run_json: str, names: tuple[str, ...],
                  settings: tuple[str, ...]) -> None:
    """What a reader relies on beside the model files: run.json's run id, rounds and
    ``settings`` fields, and the record files ``names`` as signed (one absent then must
    be absent now)."""
    for k in ("run_id", "rounds"):
        if info.get(k) != manifest.get(k):
            raise ImagingError(run_dir / run_json, f"{k} {info.get(k)!r} differs from the signed "
                               f"manifest's {manifest.get(k)!r}")
    now = settings_of(info, settings)
    for k in settings:
        if k not in manifest["settings"] or now[k] != manifest["settings"][k]:
            raise ImagingError(run_dir / run_json, f"{k!r} differs from the signed manifest's: "
                               "changed after the run wrote it")
    for name in names:
        if name not in manifest["records"]:
            raise ImagingError(run_dir / name, "not covered by the signed run manifest")
        want, got = manifest["records"][name], file_sha256(run_dir / name)
        if got != want:
            what = ("is missing" if got is None else "was not there when the run signed its record"
                    if want is None else f"SHA-256 {got[:12]}... differs from the signed manifest's {want[:12]}...")
            raise ImagingError(run_dir / name, f"{what}: changed after the run wrote it")


def check_file(path: Path, run_dir: Path, manifest: dict, manifest_name: str) -> str:
    """The signed SHA-256 of model file ``path`` of ``run_dir``, refused unless the
    file on disk has it."""
    try:
        want = manifest["files"].get(path.relative_to(run_dir).as_posix())
    except ValueError:
        raise ImagingError(path, f"not a file of the run directory {run_dir}") from None
    if want is None:
        raise ImagingError(path, f"not in the signed run manifest ({manifest_name}); refusing "
                           "to load a file the run did not sign")
    got = file_sha256(path)
    if got is None:
        raise ImagingError(path, "checkpoint not found")
    if got != want:
        raise ImagingError(path, f"SHA-256 {got[:12]}... differs from the {want[:12]}... the signed run "
                           "manifest records: the file was replaced after the run wrote it")
    return want


def adopt(path: Path, key: RecordKey, info: dict, run_json: Path, files_key: str) -> dict | None:
    """What a writer resuming with ``key`` signed before (None: nothing yet). A manifest
    that does not verify, or model files recorded without one, stop the writer."""
    if path.is_file():
        m = read_verified(path, key)
        if info.get("run_id") not in (None, m.get("run_id")):
            raise ImagingError(run_json, f"run_id {info['run_id']!r} differs from the signed "
                               f"manifest's {m.get('run_id')!r}")
        return m
    if info.get(files_key):
        raise ImagingError(path, f"missing, but {run_json.name} records model files: the run began without "
                           "a run-record key, and files cannot be signed after the fact; start a new run")
    return None


def resign(run_dir: Path, name: str, key: RecordKey, last: dict | None, info: dict, files_key: str,
           records: tuple[str, ...], settings: tuple[str, ...]) -> dict:
    """The manifest of what the run has now (run.json's ``info``), signed into
    ``run_dir/name`` unless it is ``last`` (what was signed before) unchanged."""
    m = build(info.get("run_id"), info.get("rounds"), info.get(files_key, {}),
              {n: file_sha256(run_dir / n) for n in records}, settings_of(info, settings))
    if m != last:
        write(run_dir / name, key, m)
    return m
