"""Torch-free code both federation sides share: cryptography, secure-aggregation
math, wire keys, codec, process supervision, federation/site config loading.

Imports imaging_core's torch-free parts at most; never fl_client or fl_server."""
