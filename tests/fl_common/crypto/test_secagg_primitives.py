"""The secure-aggregation building blocks, one by one."""
from __future__ import annotations

import os

import numpy as np
import pytest
from fl_common.crypto import secagg as crypto
from fl_common.secagg import TamperedShare


def test_pack_is_unambiguous():
    assert crypto.pack("ab", "c") != crypto.pack("a", "bc")
    assert crypto.pack(1) != crypto.pack("1") != crypto.pack(b"1")
    assert crypto.pack("x", 2) == crypto.pack("x", 2)


def test_x25519_agreement_gives_one_channel_key_per_pair():
    a_sk, a_pk = crypto.x25519_keypair()
    b_sk, b_pk = crypto.x25519_keypair()
    k_ab = crypto.channel_key(a_sk, b_pk, "run", "a", "b")
    assert k_ab == crypto.channel_key(b_sk, a_pk, "run", "b", "a")
    assert k_ab != crypto.channel_key(a_sk, b_pk, "run-2", "a", "b")
    assert crypto.x25519_public(a_sk) == a_pk


def test_pairwise_mask_key_is_symmetric_and_round_bound():
    a_sk, a_pk = crypto.x25519_keypair()
    b_sk, b_pk = crypto.x25519_keypair()
    k1 = crypto.pairwise_mask_key(a_sk, b_pk, "run", 1, "a", 3, "b", 7)
    assert k1 == crypto.pairwise_mask_key(b_sk, a_pk, "run", 1, "b", 7, "a", 3)
    assert k1 != crypto.pairwise_mask_key(a_sk, b_pk, "run", 2, "a", 3, "b", 7)


def test_aes_gcm_share_roundtrip_and_tamper_detection():
    key = os.urandom(32)
    ad = crypto.share_ad("run", 2, 5, "site-a", "site-b")
    nonce, ct = crypto.encrypt(key, b"secret share", ad)
    assert crypto.decrypt(key, nonce, ct, ad, "share from site-a") == b"secret share"
    bad = bytearray(ct)
    bad[3] ^= 1
    with pytest.raises(TamperedShare, match="site-a"):
        crypto.decrypt(key, nonce, bytes(bad), ad, "share from site-a")
    with pytest.raises(TamperedShare):  # relabelled: other round in the AD
        crypto.decrypt(key, nonce, ct, crypto.share_ad("run", 2, 6, "site-a", "site-b"), "x")


def test_prg_is_deterministic_uint32_and_key_dependent():
    k = os.urandom(32)
    a = crypto.prg_uint32(k, 1001)
    assert a.dtype == np.uint32 and a.shape == (1001,)
    assert np.array_equal(a, crypto.prg_uint32(k, 1001))
    assert not np.array_equal(a, crypto.prg_uint32(os.urandom(32), 1001))
    # a prefix of a longer stream: the PRG is a plain keystream
    assert np.array_equal(crypto.prg_uint32(k, 10), a[:10])


def test_keystream_chunks_give_the_one_call_stream(monkeypatch):
    # masks must not depend on the chunk size (sites and server of different
    # versions, or a change of CHUNK, must still cancel): compare odd-sized
    # chunks with one chunk over the whole length
    k, n = os.urandom(32), 1000
    whole = crypto.prg_uint32(k, n)
    monkeypatch.setattr(crypto.Keystream, "CHUNK", 7)
    assert np.array_equal(crypto.prg_uint32(k, n), whole)
    acc = np.arange(n, dtype=np.uint32)
    crypto.Keystream(n).add_into(acc, k)
    assert np.array_equal(acc, np.arange(n, dtype=np.uint32) + whole)


def test_keystream_add_sub_cancel():
    ks = crypto.Keystream(500)
    acc = np.arange(500, dtype=np.uint32)
    k = os.urandom(32)
    ks.add_into(acc, k)
    assert not np.array_equal(acc, np.arange(500))
    ks.sub_into(acc, k)
    assert np.array_equal(acc, np.arange(500))


@pytest.mark.parametrize("t,n", [(2, 2), (2, 3), (3, 5), (6, 10)])
def test_shamir_any_t_shares_recover_the_32_byte_secret(t, n):
    secret = os.urandom(32)
    shares = crypto.shamir_split(secret, t, n)
    assert [i for i, _ in shares] == list(range(1, n + 1))
    rng = np.random.default_rng(t * 100 + n)
    pick = [shares[i] for i in rng.choice(n, size=t, replace=False)]
    assert crypto.shamir_combine(pick, t) == secret
    if t > 1:  # t-1 shares are not enough
        with pytest.raises(ValueError, match="threshold"):
            crypto.shamir_combine(pick[:-1], t)
