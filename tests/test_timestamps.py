"""RFC 3161 timestamps of audit checkpoints (`backbone.audit.timestamps`, `processors.timestamps`) against
a real timestamping authority on 127.0.0.1 (`tests.tsa`): a token is asked for a checkpoint's
chain hash, checked as it arrives, and verified later under the TSA's root; each way a token can
be wrong is refused and named."""

from __future__ import annotations

import base64
import socket
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backbone.audit import log
from backbone.audit.log import Checkpoint, CheckpointCodec
from backbone.audit.timestamps import Stamp, TimestampError, Trust, accept, check_stamps, gen_time, request_for
from backbone.events.catalog import AUDIT_CHECKPOINT, load_catalog
from backbone.keys.keyring import Keyring
from backbone.settings import PROJECT_ROOT, Settings
from processors.timestamps import ask_tsa, shown_url
from tests.tsa import GOOD, OTHER_HASH, OTHER_NONCE, LocalTsa


@pytest.fixture(scope="module")
def tsa(tmp_path_factory: pytest.TempPathFactory) -> LocalTsa:
    served = LocalTsa(tmp_path_factory.mktemp("tsa")).start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def other_tsa(tmp_path_factory: pytest.TempPathFactory) -> LocalTsa:
    served = LocalTsa(tmp_path_factory.mktemp("other-tsa"), "other").start()
    yield served
    served.stop()


@pytest.fixture(scope="module")
def codec() -> CheckpointCodec:
    return CheckpointCodec(load_catalog(PROJECT_ROOT / "schemas").internal_schema(AUDIT_CHECKPOINT))


@pytest.fixture(scope="module")
def chain(codec: CheckpointCodec) -> list[Checkpoint]:
    """Three checkpoints of one writer, chained."""
    key_id, key = Keyring.generate(signers=["processor"]).signing_key()
    made, previous = [], ""
    for sequence in range(3):
        checkpoint = codec.seal(writer="w1", sequence=sequence, leaves=[bytes([sequence]) * 32], previous=previous,
                                schema="00" * 32, key_id=key_id, key=key)
        made.append(checkpoint)
        previous = codec.hash(checkpoint)
    return made


def stamp_of(tsa: LocalTsa, codec: CheckpointCodec, checkpoint: Checkpoint, trust: Trust | None = None) -> Stamp:
    request = request_for(codec.signed_body(checkpoint))
    response = accept(request, ask_tsa(tsa.url, request.as_bytes(), 5.0), trust)
    return Stamp(checkpoint.writer, checkpoint.sequence, codec.hash(checkpoint), shown_url(tsa.url), gen_time(response),
                 base64.b64encode(response.as_bytes()).decode())


def hashes_of(codec: CheckpointCodec, checkpoints: list[Checkpoint]) -> dict[tuple[str, int], str]:
    return {(c.writer, c.sequence): codec.hash(c) for c in checkpoints}


def test_a_checkpoint_timestamped_by_the_tsa_verifies_under_its_root(tsa: LocalTsa, codec, chain) -> None:  # noqa: ANN001
    trust = Trust.load(tsa.root_file)
    stamp = stamp_of(tsa, codec, chain[1], trust)
    assert stamp.checkpoint == codec.hash(chain[1]) == chain[2].previous  # the imprint is the chain hash
    assert abs((stamp.gen_time - datetime.now(UTC)).total_seconds()) < 60
    found = check_stamps([stamp], hashes_of(codec, chain), set(hashes_of(codec, chain)), trust)
    assert (found.verified, found.failures, found.highest, found.latest) == (1, [], {"w1": 1}, stamp.gen_time)


def test_the_tsa_certificate_with_its_root_pins_that_tsa(tsa: LocalTsa, codec, chain) -> None:  # noqa: ANN001
    pinned = Trust.load(tsa.chain_file)
    assert pinned.tsa_certificate == tsa.certificate
    stamp = stamp_of(tsa, codec, chain[0])
    assert check_stamps([stamp], hashes_of(codec, chain), set(), pinned).verified == 1


def test_an_answer_for_another_hash_is_refused(tsa: LocalTsa, codec, chain) -> None:  # noqa: ANN001
    tsa.mode = OTHER_HASH
    try:
        with pytest.raises(TimestampError, match="another hash than the checkpoint's"):
            stamp_of(tsa, codec, chain[0])
    finally:
        tsa.mode = GOOD


def test_an_answer_with_another_nonce_is_refused(tsa: LocalTsa, codec, chain) -> None:  # noqa: ANN001
    tsa.mode = OTHER_NONCE
    try:
        with pytest.raises(TimestampError, match="another nonce"):
            stamp_of(tsa, codec, chain[0])
    finally:
        tsa.mode = GOOD


def test_a_token_signed_by_another_tsa_is_refused_as_it_arrives_and_when_verified(tsa: LocalTsa, other_tsa: LocalTsa, codec,  # noqa: ANN001
                                                                                  chain) -> None:
    trust = Trust.load(tsa.root_file)
    with pytest.raises(TimestampError, match="does not verify"):
        stamp_of(other_tsa, codec, chain[0], trust)
    stamp = stamp_of(other_tsa, codec, chain[0])
    found = check_stamps([stamp], hashes_of(codec, chain), set(), trust)
    assert [(f.kind, f.writer, f.sequence) for f in found.failures] == [(log.BAD_TIMESTAMP, "w1", 0)]
    assert "does not verify" in found.failures[0].detail and found.verified == 0


def test_a_landed_timestamp_naming_another_hash_or_carrying_another_token_fails(tsa: LocalTsa, codec, chain) -> None:  # noqa: ANN001
    trust = Trust.load(tsa.root_file)
    first, second = stamp_of(tsa, codec, chain[0]), stamp_of(tsa, codec, chain[1])
    edited = {
        "hash": replace(first, checkpoint=codec.hash(chain[1])),
        "token": replace(first, token=second.token),
        "gen_time": replace(first, gen_time=datetime(2020, 1, 1, tzinfo=UTC)),
        "garbage": replace(first, token=base64.b64encode(b"not a token").decode()),
    }
    for what, stamp in edited.items():
        found = check_stamps([stamp], hashes_of(codec, chain), set(), trust)
        assert [(f.kind, f.sequence) for f in found.failures] == [(log.BAD_TIMESTAMP, 0)], what


def test_without_the_tsa_certificates_tokens_are_unchecked_not_passed(tsa: LocalTsa, codec, chain) -> None:  # noqa: ANN001
    stamp = stamp_of(tsa, codec, chain[2])
    found = check_stamps([stamp], hashes_of(codec, chain), set(), None)
    assert (found.verified, found.unchecked, found.failures, found.highest) == (0, 1, [], {})


def test_a_timestamp_of_a_checkpoint_not_in_the_trail_is_a_warning(tsa: LocalTsa, codec, chain) -> None:  # noqa: ANN001
    stamp = stamp_of(tsa, codec, chain[2])
    found = check_stamps([stamp], hashes_of(codec, chain[:2]), set(hashes_of(codec, chain[:2])), Trust.load(tsa.root_file))
    assert found.failures == [] and [(w.kind, w.sequence) for w in found.warnings] == [(log.TIMESTAMP_AHEAD, 2)]


def test_an_unreachable_tsa_is_one_clear_error_without_its_credentials() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TimestampError, match=f"TSA http://127.0.0.1:{port}/tsa unreachable") as raised:
        ask_tsa(f"http://user:s3cret@127.0.0.1:{port}/tsa", b"query", 2.0)
    assert "s3cret" not in str(raised.value)


def test_trusted_certificates_without_a_root_are_refused_naming_the_file(tsa: LocalTsa, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    only_tsa = tmp_path / "tsa-only.pem"
    only_tsa.write_bytes(tsa.certificate.public_bytes(Encoding.PEM))
    with pytest.raises(TimestampError, match=f"{only_tsa}: no root"):
        Trust.load(only_tsa)
    with pytest.raises(TimestampError, match="not a readable PEM"):
        Trust.load(tmp_path / "absent.pem")


def test_timestamps_are_off_unless_a_tsa_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().audit_tsa_url is None
    monkeypatch.setenv("BACKBONE_AUDIT_TSA_URL", "")
    assert Settings().audit_tsa_url is None
    monkeypatch.setenv("BACKBONE_AUDIT_TSA_URL", "tsa.example")
    with pytest.raises(ValueError, match="http:// or https://"):
        Settings()
