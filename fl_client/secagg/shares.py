"""What a site sends besides its keys: encrypted Shamir shares of its secrets,
and its masked update (MaskedUpdate) or the masks prepared for it
(PreparedMask). Used by fl_client.secagg.site."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from fl_common.crypto import secagg as crypto

SHARE_PLAIN = 2 + crypto.SECRET_BYTES   # uint16 index + share


def encrypt_shares(run_id: str, me: str, channel_sk: bytes, holders: Sequence[str],
                   channel_pks: Mapping[str, bytes], secret: bytes, threshold: int,
                   kind: int, tag: int) -> list[dict]:
    out = []
    for (idx, share), holder in zip(crypto.shamir_split(secret, threshold, len(holders)),
                                    holders):
        key = crypto.channel_key(channel_sk, channel_pks[holder], run_id, me, holder)
        nonce, ct = crypto.encrypt(key, idx.to_bytes(2, "big") + share,
                                   crypto.share_ad(run_id, kind, tag, me, holder))
        out.append({"sender": me, "receiver": holder, "kind": kind, "tag": tag,
                    "nonce": nonce, "ciphertext": ct})
    return out


@dataclass
class MaskedUpdate:
    """What a site sends at T: `vector` (uint32[n + 2], put it in an Array) and
    `payload` (the MaskedManifest bytes). `clipped`/`weight_clipped` stay at
    the site for its own report; the server only learns the sum of clips."""
    round: int
    vector: np.ndarray
    payload: bytes
    clipped: int
    weight: float
    weight_clipped: bool



@dataclass
class PreparedMask:
    """A site's summed masks for one round, made before its update exists
    (SiteSecAgg.prepare_mask). Holds the self-mask seed: keep it in memory only."""
    owner: tuple[str, str]  # (site, run) that made it
    round: int
    request: bytes
    epoch: int
    view: dict
    seed: bytes = field(repr=False)
    masks: np.ndarray | None = field(repr=False)
