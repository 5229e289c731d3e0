"""The cryptographic primitives of SecAgg+, all from maintained libraries.

* X25519 key agreement, HKDF(SHA-256) and AES-GCM from ``cryptography``;
* masks: AES-256 in CTR mode (``cryptography``) as a PRG, its key stream read by numpy as
  unsigned integers (``np.frombuffer``, no per-coordinate Python);
* Shamir t-of-k secret sharing from pycryptodome (``Crypto.Protocol.SecretSharing``,
  GF(2^128), one 16-byte secret per polynomial).

**Secrets are 16-byte seeds.** A client's two secrets — the seed of its masking key pair
and the seed of its self mask — are 128-bit seeds, each one Shamir polynomial: the
masking X25519 private key is ``HKDF(seed)`` and the self-mask AES key is ``HKDF(seed)``.
128 bits of entropy match X25519's security level, and a single 16-byte chunk halves the
Shamir work, which (pycryptodome's GF(2^128) arithmetic is pure Python) dominates the
server's CPU time in large cohorts.

Every derived key binds the protocol version, the round and the client ids in its HKDF
``info``, so a key or mask of one round or pair is never reused for another.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import threading

import numpy as np
from Crypto.Protocol.SecretSharing import (
    Shamir,
    _Element,  # GF(2^128), the type Shamir itself uses
)
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "SEED_BYTES",
    "InvalidTag",
    "add_mask",
    "check_public_key",
    "combine_shares",
    "decrypt",
    "encrypt",
    "mask_key_from_seed",
    "new_seed",
    "pair_mask_seed",
    "public_bytes",
    "seed_commitment",
    "self_mask_seed",
    "share_key",
    "split_secret",
    "work_dtype",
]

SEED_BYTES = 16
KEY_BYTES = 32
NONCE_BYTES = 12
_DOMAIN = b"fedpeft-secagg-v1 "
_IDS = struct.Struct("<QQQ")  # round, id, id
#: every CTR key is derived for one use, so a fixed counter block is safe
_CTR_NONCE = bytes(16)
#: a throwaway key used only to probe peers' public keys for low-order points
_PROBE = X25519PrivateKey.generate()


def new_seed() -> bytes:
    """A fresh 16-byte secret from the operating system's CSPRNG."""
    return os.urandom(SEED_BYTES)


def _hkdf(material: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=_DOMAIN + info).derive(
        material
    )


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def check_public_key(raw: bytes) -> X25519PublicKey:
    """Parse a raw X25519 public key; low-order points (all-zero shared secret) raise
    ``ValueError``."""
    key = X25519PublicKey.from_public_bytes(bytes(raw))
    _PROBE.exchange(key)  # raises ValueError on a low-order point, whatever the scalar
    return key


def mask_key_from_seed(seed: bytes) -> X25519PrivateKey:
    """The masking key pair of a client, derived from its 16-byte seed."""
    return X25519PrivateKey.from_private_bytes(_hkdf(seed, b"mask key"))


def _pair(round_num: int, a: int, b: int) -> bytes:
    lo, hi = (a, b) if a < b else (b, a)
    return _IDS.pack(round_num, lo, hi)


def pair_mask_seed(sk: X25519PrivateKey, peer_pk: bytes, round_num: int, a: int, b: int) -> bytes:
    """The AES key of the pairwise mask between clients ``a`` and ``b`` (either side
    computes the same key from its private and the other's public masking key)."""
    shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    return _hkdf(shared, b"pair mask" + _pair(round_num, a, b))


def self_mask_seed(seed: bytes, round_num: int, client_id: int) -> bytes:
    """The AES key of a client's self mask, from its 16-byte self-mask seed."""
    return _hkdf(seed, b"self mask" + _IDS.pack(round_num, client_id, client_id))


def seed_commitment(seed: bytes, round_num: int, client_id: int) -> bytes:
    """SHA-256 commitment to a self-mask seed, published with the public keys so the
    server can check a reconstructed seed (a forged share would otherwise give a wrong
    sum)."""
    return hashlib.sha256(
        _DOMAIN + b"self seed" + _IDS.pack(round_num, client_id, client_id) + seed
    ).digest()


def share_key(enc_sk: X25519PrivateKey, peer_pk: bytes, round_num: int, a: int, b: int) -> bytes:
    """The AES-GCM key protecting shares between clients ``a`` and ``b``."""
    shared = enc_sk.exchange(X25519PublicKey.from_public_bytes(peer_pk))
    return _hkdf(shared, b"share encryption" + _pair(round_num, a, b))


def _aad(round_num: int, sender: int, recipient: int) -> bytes:
    return _DOMAIN + b"share" + _IDS.pack(round_num, sender, recipient)


def encrypt(key: bytes, plaintext: bytes, round_num: int, sender: int, recipient: int) -> bytes:
    """AES-GCM with a random nonce; the associated data binds round, sender and recipient.
    Returns ``nonce || ciphertext || tag``."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, _aad(round_num, sender, recipient))


def decrypt(key: bytes, blob: bytes, round_num: int, sender: int, recipient: int) -> bytes:
    """Inverse of :func:`encrypt`; raises :class:`cryptography.exceptions.InvalidTag` when
    the ciphertext, its nonce, the key or the bound ids do not match."""
    blob = bytes(blob)
    if len(blob) < NONCE_BYTES + 16:
        raise InvalidTag()
    nonce, body = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
    return AESGCM(key).decrypt(nonce, body, _aad(round_num, sender, recipient))


def work_dtype(bits: int) -> type[np.unsignedinteger]:
    """Arithmetic dtype for masks mod ``2**bits``: uint32 up to 32 bits (half the PRG
    bytes and memory traffic), else uint64. Sums wrap mod 2**32 / 2**64, both multiples
    of 2**bits, and are reduced once at the end."""
    return np.uint32 if bits <= 32 else np.uint64


_BUFFERS = threading.local()


def _buffers(nbytes: int) -> tuple[bytes, bytearray]:
    """A zero input and an output buffer of ``nbytes``, reused per thread: allocating
    and zeroing 4-8 MB per mask costs 3-4x the AES itself."""
    cached = getattr(_BUFFERS, "pair", None)
    if cached is None or len(cached[0]) != nbytes:
        cached = (bytes(nbytes), bytearray(nbytes + 15))  # update_into wants block - 1 spare
        _BUFFERS.pair = cached
    return cached


def add_mask(acc: np.ndarray, key: bytes, sign: int) -> None:
    """``acc += sign * PRG(key)`` element-wise with wrap-around, in place.

    The PRG is AES-256-CTR's key stream (encryption of zeros), read as ``acc.dtype``."""
    nbytes = acc.size * acc.itemsize
    zeros, out = _buffers(nbytes)
    Cipher(algorithms.AES(key), modes.CTR(_CTR_NONCE)).encryptor().update_into(zeros, out)
    mask = np.frombuffer(out, dtype=acc.dtype, count=acc.size)
    if sign > 0:
        np.add(acc, mask, out=acc)
    else:
        np.subtract(acc, mask, out=acc)


def split_secret(secret: bytes, threshold: int, num_shares: int) -> list[bytes]:
    """Shamir-split a 16-byte secret into ``num_shares`` shares (x = 1..num_shares), any
    ``threshold`` of which reconstruct it."""
    shares = Shamir.split(threshold, num_shares, secret, False)
    return [share for _, share in sorted(shares)]


def combine_shares(shares: list[tuple[int, bytes]]) -> bytes:
    """Reconstruct a 16-byte secret from exactly ``threshold`` ``(x, share)`` pairs.

    The same interpolation as ``Shamir.combine`` (pycryptodome's formula and its
    GF(2^128) element type), with the Lagrange coefficients at 0 cached per set of
    x-coordinates: the server rebuilds one secret per client, and in a round almost all of
    them come from the same x-set, so ``combine`` would recompute ``2·t²``
    multiplications that do not depend on the secret (at t = 50 that was ~85% of the
    server's CPU). Tests check it against ``Shamir.combine``.
    """
    xs = tuple(int(x) for x, _ in shares)
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share x-coordinate")
    total = _Element(0)
    for coefficient, (_, share) in zip(_lagrange_at_zero(xs), shares, strict=True):
        total += _gf_mul(_Element(bytes(share)), coefficient)
    return bytes(total.encode())


@functools.lru_cache(maxsize=1024)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[_Element, ...]:
    """l_j(0) = prod_{m != j} x_m / (x_j + x_m) in GF(2^128) (subtraction is addition)."""
    points = [_Element(x) for x in xs]
    out = []
    for j, x_j in enumerate(points):
        numerator, denominator = _Element(1), _Element(1)
        for m, x_m in enumerate(points):
            if m != j:
                numerator = _gf_mul(numerator, x_m)
                denominator = _gf_mul(denominator, x_j + x_m)
        out.append(_gf_mul(numerator, denominator.inverse()))
    return tuple(out)


def _gf_mul(a: _Element, b: _Element) -> _Element:
    # pycryptodome's stub types the factor as int; Shamir.combine multiplies two elements
    return a * b  # type: ignore[operator]
