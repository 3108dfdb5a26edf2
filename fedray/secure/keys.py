"""Key agreement and authenticated encryption with `cryptography`: X25519, HKDF-SHA256, AES-GCM.

A site's private keys are 32 bytes drawn from a generator seeded by (seed, round, site, purpose): a simulation's
keys, reproducible on any worker. A deployment draws them from the operating system (X25519PrivateKey.generate()).
"""

from __future__ import annotations

import struct
from typing import Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE_BYTES = 12


def seeded_bytes(count: int, *seed: int) -> bytes:
    """`count` bytes from the generator of `seed` (seed, round, site, purpose, ...): the simulation's randomness."""
    words = np.random.SeedSequence(list(seed)).generate_state((count + 3) // 4, dtype=np.uint32)
    return words.tobytes()[:count]


def private_key(*seed: int) -> bytes:
    """A raw X25519 private key (32 bytes) from the simulation's seeded randomness."""
    return seeded_bytes(32, *seed)


def public_key(private: bytes) -> bytes:
    """The raw public key (32 bytes) of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes) -> bytes:
    """The 32-byte secret two sites agree on (X25519, then HKDF-SHA256): the same from either side."""
    return agreements(private, {0: peer_public})[0]


def agreements(private: bytes, peer_publics: Mapping[int, bytes]) -> dict[int, bytes]:
    """`agree` with each peer's public key, the private key loaded once (its loading costs as much as an exchange)."""
    key = X25519PrivateKey.from_private_bytes(private)
    return {peer: HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedray secagg+").derive(
                key.exchange(X25519PublicKey.from_public_bytes(public)))
            for peer, public in peer_publics.items()}


def encrypt(key: bytes, plaintext: bytes, sender: int, receiver: int, nonce: bytes) -> bytes:
    """AES-GCM under `key`, the (sender, receiver) pair authenticated with it; the nonce leads the ciphertext.
    Both directions of a pair share the key: their nonces must differ (they are seeded by the sender)."""
    return nonce + AESGCM(key).encrypt(nonce, plaintext, struct.pack(">qq", sender, receiver))


def decrypt(key: bytes, ciphertext: bytes, sender: int, receiver: int) -> bytes:
    """The plaintext of `encrypt`; raises cryptography's InvalidTag when the key, the pair or the bytes differ."""
    nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    return AESGCM(key).decrypt(nonce, body, struct.pack(">qq", sender, receiver))
