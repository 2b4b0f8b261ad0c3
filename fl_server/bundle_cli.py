"""`fedvox infer` and `fedvox bundle verify`: what a site runs on a bundle, always
against a key it pinned (a flag or its kit), never one inside the bundle."""
from __future__ import annotations

import json
import sys


def _pinned_key(a):
    """The signer key a site trusts: --public-key FILE or KIT/bundle_signing.pub, never
    a key inside the bundle. None only with --allow-unsigned (which then warns)."""
    from pathlib import Path
    from imaging_core.errors import ImagingError
    if a.public_key and a.kit:
        raise ImagingError(None, "give --public-key or --kit, not both")
    if a.kit:
        from fl_common.kit import KIT_BUNDLE_PUB
        key = Path(a.kit) / KIT_BUNDLE_PUB
        if not key.is_file():
            raise ImagingError(key, "missing: this kit has no bundle-signing public key (pass --public-key)")
        return key
    if a.public_key:
        return a.public_key
    if not a.allow_unsigned:
        raise ImagingError(a.bundle, "refused: no pinned key to verify it with; pass --public-key FILE "
                           "or --kit KIT (the coordinator's bundle-signing key), or --allow-unsigned")
    return None


def _warn_unsigned(a, key) -> None:
    from imaging_core.bundle.manifest import is_signed
    if a.allow_unsigned and (key is None or not is_signed(a.bundle)):
        what = "is not signed" if not is_signed(a.bundle) else "has a signature that was NOT checked (no pinned key)"
        print(f"WARNING: {a.bundle} {what}: nothing proves who made it; only its files were checked "
              "against its own manifest (--allow-unsigned)", file=sys.stderr)


def _key_flags(p) -> None:
    p.add_argument("--public-key", default=None,
                   help="the coordinator's bundle-signing public key to pin (PEM or OpenSSH)")
    p.add_argument("--kit", default=None, help="a site kit: pin its bundle-signing public key")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept a bundle with no (checked) signature, with a warning; files are still "
                        "hash-checked against its manifest")


def _cmd_infer(a) -> int:
    from imaging_core.bundle.infer import infer_file, infer_folder, is_study_folder
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    key = _pinned_key(a)
    _warn_unsigned(a, key)
    kw = dict(device=a.device, progress=not a.quiet, modality=a.modality, public_key=key,
              scheme=MANIFEST_SIGNATURES, allow_unsigned=a.allow_unsigned, force=tuple(a.force))
    if is_study_folder(a.input) and a.series_uid is None and not (a.dicom_seg or a.seg_nrrd):
        outs = infer_folder(a.bundle, a.input, a.out, **kw)  # folder in, folder out (nnU-Net's -i/-o)
    else:
        outs = [infer_file(a.bundle, a.input, a.out, series_uid=a.series_uid, dicom_seg=a.dicom_seg,
                           seg_nrrd=a.seg_nrrd, **kw), a.dicom_seg, a.seg_nrrd]
    print("\n".join(str(p) for p in outs if p))
    return 0


def _cmd_verify(a) -> int:
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    from imaging_core.bundle.verify import verify_bundle
    key = _pinned_key(a)
    problems = verify_bundle(a.bundle, public_key=key, strict=a.strict, scheme=MANIFEST_SIGNATURES,
                             allow_unsigned=a.allow_unsigned)
    print(json.dumps({"bundle": a.bundle, "ok": not problems, "problems": problems}))
    if problems:
        print(f"fedvox bundle verify: {a.bundle}: refused: " + "; ".join(problems), file=sys.stderr)
        return 2
    _warn_unsigned(a, key)
    return 0


def add_bundle_commands(cmd, device_flag) -> None:
    """The infer and bundle subcommands, added with the main parser's ``cmd`` maker."""
    p = cmd("infer", _cmd_infer, "segment a NIfTI file, a DICOM series or a folder of them with a bundle")
    p.add_argument("bundle")
    p.add_argument("input", help="a NIfTI/NRRD file, a DICOM series directory, or a folder of files and "
                                 "series folders (then --out is a folder)")
    p.add_argument("--out", required=True,
                   help="segmentation file (a .nii or .nii.gz label map on the input's grid) or folder "
                        "(<input>_seg.nii.gz per input)")
    p.add_argument("--series-uid", default=None, help="the series to segment in a folder holding several")
    p.add_argument("--force", action="append", default=[], choices=("modality", "intensity", "spacing", "all"),
                   help="skip an input check that failed (repeatable): DICOM modality vs the bundle's, "
                        "intensity range (e.g. CT not in HU), spacing far from the bundle's")
    device_flag(p, "cpu")
    p.add_argument("--modality", default=None)
    p.add_argument("--dicom-seg", default=None, metavar="FILE.dcm",
                   help="also write a DICOM SEG referencing the input series (DICOM input only), for PACS/OHIF")
    p.add_argument("--seg-nrrd", default=None, metavar="FILE.seg.nrrd",
                   help="also write a 3D Slicer segmentation (.seg.nrrd, named and coloured segments)")
    p.add_argument("--quiet", action="store_true")
    _key_flags(p)

    p = cmd("bundle", None, "bundle tools")
    bsub = p.add_subparsers(dest="bundle_cmd", required=True)
    q = bsub.add_parser("verify", help="check a bundle's manifest signature against a pinned key; "
                        "names changed or added files",
                        epilog="exit status: 0 verified; 2 refused (one line on stderr: not signed, signed "
                               "by another key, files changed) or bad usage")
    q.add_argument("bundle")
    _key_flags(q)
    q.add_argument("--strict", action="store_true")
    q.set_defaults(fn=_cmd_verify)
