"""AES-SIV (RFC 5297) built from two keyed primitives that stay where their keys are: an AES-CMAC
under K1 (S2V) and AES-CTR under K2. PKCS#11 has no SIV mechanism, so a token computes the CMACs
(`CKM_AES_CMAC`) and the keystream (`CKM_AES_CTR`) and only the public steps run here: the
doubling and xor of S2V, clearing bits 31 and 63 of the synthetic IV, and the SIV check on opening.
Byte for byte the same as `cryptography`'s `AESSIV(K1 || K2)` (tests/test_pkcs11.py checks it).

The S2V state after the associated data depends on the associated data only, so `Siv.sealer`
computes it once per (provider, domain, field, key id): one CMAC and one CTR call per value.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

BLOCK = 16
_ZERO = bytes(BLOCK)
_RB = 0x87  # the doubling constant of GF(2^128) in RFC 5297 section 2.3
_CLEAR = bytes.fromhex("ffffffffffffffff7fffffff7fffffff")  # clears bits 63 and 31 (RFC 5297 2.6)

Cmac = Callable[[bytes], bytes]  # message -> 16-byte AES-CMAC under K1
Ctr = Callable[[bytes, bytes], bytes]  # (16-byte initial counter block, data) -> AES-CTR under K2


class SivError(ValueError):
    """The synthetic IV does not match: wrong key, associated data, or an altered token."""


def dbl(block: bytes) -> bytes:
    """Multiplication by x in GF(2^128) (RFC 5297 `dbl`)."""
    number = int.from_bytes(block, "big") << 1
    if number >> 128:
        number = (number & ((1 << 128) - 1)) ^ _RB
    return number.to_bytes(BLOCK, "big")


def xor(left: bytes, right: bytes) -> bytes:
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


def _s2v_head(cmac: Cmac, associated: Sequence[bytes]) -> bytes:
    """S2V's D after the zero block and every associated-data string."""
    state = cmac(_ZERO)
    for item in associated:
        state = xor(dbl(state), cmac(item))
    return state


def _s2v_last(cmac: Cmac, head: bytes, plaintext: bytes) -> bytes:
    """S2V's final CMAC over the plaintext (the last string), given `head` from `_s2v_head`."""
    if len(plaintext) >= BLOCK:
        last = plaintext[:-BLOCK] + xor(plaintext[-BLOCK:], head)
    else:
        last = xor(dbl(head), plaintext + b"\x80" + bytes(BLOCK - 1 - len(plaintext)))
    return cmac(last)


class Siv:
    """AES-SIV over a CMAC and a CTR function; `sealer`/`opener` are bound to one associated data."""

    def __init__(self, cmac: Cmac, ctr: Ctr) -> None:
        self._cmac = cmac
        self._ctr = ctr

    def sealer(self, associated: Sequence[bytes]) -> Callable[[bytes], bytes]:
        """plaintext -> SIV || ciphertext, deterministic for this associated data."""
        cmac, ctr = self._cmac, self._ctr
        head = _s2v_head(cmac, associated)

        def seal(plaintext: bytes) -> bytes:
            iv = _s2v_last(cmac, head, plaintext)
            return iv + (ctr(_counter(iv), plaintext) if plaintext else b"")

        return seal

    def open(self, sealed: bytes, associated: Sequence[bytes]) -> bytes:
        """The plaintext of `seal`'s output; raises `SivError` when the SIV does not check."""
        if len(sealed) < BLOCK:
            raise SivError("too short for AES-SIV")
        iv, body = sealed[:BLOCK], sealed[BLOCK:]
        plaintext = self._ctr(_counter(iv), body) if body else b""
        if not hmac.compare_digest(_s2v_last(self._cmac, _s2v_head(self._cmac, associated), plaintext), iv):
            raise SivError("the synthetic IV does not match")
        return plaintext


def _counter(iv: bytes) -> bytes:
    """The initial counter block Q: the SIV with bits 31 and 63 cleared."""
    return bytes(a & b for a, b in zip(iv, _CLEAR, strict=True))
