"""All of fedvox's cryptography, in one reviewable package (DESIGN.md): no other
module in the project imports `cryptography` or pycryptodome.

- secagg.py: secure-aggregation primitives (X25519, HKDF, AES-GCM, the mask
  keystream, Shamir shares);
- pki.py: site enrollment keys and their signatures, the federation CA and the
  SuperLink's TLS certificate;
- signing.py: signatures of exported bundles' manifests (MANIFEST_SIGNATURES) and
  of run directories' manifests (RUN_RECORD_SIGNATURES).

Only well-kept libraries do the cryptographic work (`cryptography`,
pycryptodome); nothing here imports torch.
"""
