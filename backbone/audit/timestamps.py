"""RFC 3161 timestamps of audit checkpoints: the request for one checkpoint, the checks on a TSA's
answer, and verification of a landed token against trusted certificates. No Kafka, ClickHouse or
HTTP here (rfc3161-client and cryptography only): `processors.timestamps` asks the TSA with it,
`consumers.audit_trail` verifies the landed timestamps with it.

What a timestamp proves: the timestamping authority (TSA) signed that the checkpoint's hash (the
SHA-256 of its signed body, which the writer's next checkpoint names as `previous`) existed at the
token's `gen_time`. Checkpoints are hash-chained, so the writer's whole chain up to that checkpoint,
and every record those checkpoints seal, existed by then too. It says nothing about checkpoints
sealed after it, and no more than the TSA's word: trust in it is trust in the TSA's key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimeStampRequest,
    TimestampRequestBuilder,
    TimeStampResponse,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from backbone.audit.log import BAD_TIMESTAMP, TIMESTAMP_AHEAD, Failure
from backbone.errors import BackboneError

SHA256_OID = x509.ObjectIdentifier("2.16.840.1.101.3.4.2.1")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampError(BackboneError):
    """A TSA that cannot be reached, refuses, or answers with a token that does not hold; or
    trusted certificates that cannot be read. The message never carries the TSA's credentials."""


@dataclass(slots=True, frozen=True)
class Stamp:
    """One timestamp of one checkpoint (`schemas/backbone.AuditTimestamp.avsc`)."""

    writer: str
    sequence: int
    checkpoint: str  # hex SHA-256 of the checkpoint's signed body: the imprint the TSA signed
    tsa: str
    gen_time: datetime
    token: str  # base64 DER TimeStampResp

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Stamp:
        values = {name: record[name] for name in ("writer", "sequence", "checkpoint", "tsa", "gen_time", "token")}
        if isinstance(values["gen_time"], int):
            values["gen_time"] = _EPOCH + timedelta(microseconds=values["gen_time"])
        elif values["gen_time"].tzinfo is None:
            values["gen_time"] = values["gen_time"].replace(tzinfo=UTC)
        return cls(**values)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    def response(self) -> TimeStampResponse:
        """The TSA's answer the token holds; `TimestampError` if it is not one."""
        try:
            return decode_timestamp_response(base64.b64decode(self.token, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise TimestampError(f"the token is not a DER TimeStampResp ({type(exc).__name__})") from None


def request_for(signed_body: bytes) -> TimeStampRequest:
    """The request to timestamp a checkpoint whose signed body is `signed_body`: SHA-256 imprint
    (the checkpoint's chain hash), a fresh nonce, and the TSA's certificate asked for."""
    return (TimestampRequestBuilder().data(signed_body).hash_algorithm(HashAlgorithm.SHA256)
            .nonce(nonce=True).cert_request(cert_request=True).build())


@dataclass(slots=True, frozen=True)
class Trust:
    """The certificates a timestamp must chain to: roots (CA certificates), intermediates, and,
    when the file holds one certificate that is not a CA, that TSA certificate pinned."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    tsa_certificate: x509.Certificate | None = None
    source: str = ""

    @classmethod
    def load(cls, path: Path) -> Trust:
        """The PEM certificates in `path` (the TSA's root, optionally its own certificate and
        intermediates); `TimestampError` naming the file if they cannot be used."""
        try:
            certificates = x509.load_pem_x509_certificates(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise TimestampError(f"TSA certificates {path}: not a readable PEM certificate file ({type(exc).__name__})") from None
        cas = [c for c in certificates if _is_ca(c)]
        leaves = [c for c in certificates if not _is_ca(c)]
        roots = [c for c in cas if c.issuer == c.subject]
        if not roots:
            raise TimestampError(f"TSA certificates {path}: no root (self-signed CA) certificate; the file must hold the root "
                                 "the TSA's certificate chains to (and may hold the TSA's certificate too)")
        if len(leaves) > 1:
            raise TimestampError(f"TSA certificates {path}: {len(leaves)} non-CA certificates; give at most one, the TSA's own")
        return cls(tuple(roots), tuple(c for c in cas if c.issuer != c.subject), leaves[0] if leaves else None, str(path))

    def problem(self, response: TimeStampResponse, digest: bytes) -> str | None:
        """Why the token does not hold for `digest` under these certificates, or None when it does."""
        builder = VerifierBuilder(tsa_certificate=self.tsa_certificate, intermediates=list(self.intermediates),
                                  roots=list(self.roots))
        try:
            builder.build().verify(response, digest)
        except VerificationError as exc:
            return f"the token does not verify under {self.source or 'the trusted certificates'}: {str(exc)[:200]}"
        except ValueError as exc:
            return f"the token cannot be checked ({str(exc)[:200]})"
        return None


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return bool(certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def accept(request: TimeStampRequest, answer: bytes, trust: Trust | None = None) -> TimeStampResponse:
    """The TSA's answer to `request`, once it holds: granted, for the requested hash, with the
    request's nonce, and (given `trust`) signed by a certificate chaining to it. Else
    `TimestampError` saying which."""
    try:
        response = decode_timestamp_response(answer)
    except ValueError as exc:
        raise TimestampError(f"the answer is not a DER TimeStampResp ({type(exc).__name__})") from None
    if response.status not in (PKIStatus.GRANTED, PKIStatus.GRANTED_WITH_MODS):
        said = "; ".join(response.status_string)[:200]
        raise TimestampError(f"the TSA refused the request (PKIStatus {response.status}{': ' + said if said else ''})")
    imprint = response.tst_info.message_imprint
    if imprint.hash_algorithm != SHA256_OID or imprint.message != request.message_imprint.message:
        raise TimestampError("the token is for another hash than the checkpoint's")
    if response.tst_info.nonce != request.nonce:
        raise TimestampError("the token carries another nonce than the request's (a replayed or misrouted answer)")
    if trust is not None and (problem := trust.problem(response, request.message_imprint.message)):
        raise TimestampError(problem)
    return response


def gen_time(response: TimeStampResponse) -> datetime:
    moment = response.tst_info.gen_time
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- verification of landed timestamps ----------------------------------------------------------
@dataclass
class StampCheck:
    """What the landed timestamps show: tokens that hold, each writer's highest timestamped
    sequence, the latest gen_time, and failures (`BAD_TIMESTAMP`) and warnings (`TIMESTAMP_AHEAD`)."""

    verified: int = 0
    unchecked: int = 0  # tokens whose signature could not be checked: no trusted certificates given
    highest: dict[str, int] = field(default_factory=dict)
    latest: datetime | None = None
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)


def check_stamps(stamps: Iterable[Stamp], hashes: Mapping[tuple[str, int], str], present: set[tuple[str, int]],
                 trust: Trust | None) -> StampCheck:
    """Each timestamp against the verified chains (`hashes`: (writer, sequence) -> chain hash of
    each checkpoint that holds; `present`: every checkpoint read, holding or not). A token that does
    not verify, is for another hash, or names a hash other than its checkpoint's is `BAD_TIMESTAMP`;
    a timestamp of a checkpoint not in the trail is a warning (not landed yet, or the chain was
    cut). Without `trust`, imprints are still compared; signatures are counted as unchecked."""
    found = StampCheck()
    for stamp in stamps:
        position = (stamp.writer, stamp.sequence)
        expected = hashes.get(position)
        if expected is None:
            if position not in present:
                found.warnings.append(Failure(TIMESTAMP_AHEAD, stamp.writer, stamp.sequence,
                                              "a timestamp names this checkpoint, which is not in the trail "
                                              "(not landed yet, or the writer's newest checkpoints were removed)"))
            continue  # a checkpoint that does not hold is reported by the chain check
        problem = _stamp_problem(stamp, expected, trust)
        if problem:
            found.failures.append(Failure(BAD_TIMESTAMP, stamp.writer, stamp.sequence, problem))
            continue
        if trust is None:
            found.unchecked += 1
            continue
        found.verified += 1
        found.highest[stamp.writer] = max(found.highest.get(stamp.writer, -1), stamp.sequence)
        found.latest = max(found.latest or stamp.gen_time, stamp.gen_time)
    return found


def _stamp_problem(stamp: Stamp, expected: str, trust: Trust | None) -> str | None:
    if stamp.checkpoint != expected:
        return f"names hash {stamp.checkpoint[:16]}…, not the hash of the checkpoint it is for"
    try:
        response = stamp.response()
    except TimestampError as exc:
        return str(exc)
    digest = bytes.fromhex(expected)
    imprint = response.tst_info.message_imprint
    if imprint.hash_algorithm != SHA256_OID or imprint.message != digest:
        return "the token is for another hash than the checkpoint's"
    if gen_time(response) != stamp.gen_time:
        return f"gen_time {stamp.gen_time:%Y-%m-%d %H:%M:%S} is not the token's ({gen_time(response):%Y-%m-%d %H:%M:%S})"
    return trust.problem(response, digest) if trust is not None else None
