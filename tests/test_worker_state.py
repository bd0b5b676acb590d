"""A worker's state stays bounded as the population grows: each erasure is applied in constant time
(never a copy of every erasure so far), consent entries are compact, and a worker refuses to start on
a compacted state topic whose partitions changed (its tombstones would miss their records)."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backbone.control.erasure import ErasureRecord, oversight_tokens
from backbone.events.catalog import load_catalog
from backbone.events.serde import Decoder, encoder_for
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.settings import PROJECT_ROOT
from processors.consent import ConsentTable
from processors.erasure import ErasureTable
from processors.state_partitions import RepartitionedStateTopic, check_partitions
from tests.test_control_plane import LocalSchemas, change

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def test_an_erasure_is_added_in_place_not_by_copying_every_erasure_so_far() -> None:
    keyring = Keyring.generate(domains=[OVERSIGHT_DOMAIN])
    table = ErasureTable(keyring)
    subjects = [str(100_000_000 + i) for i in range(50)]
    held = None
    for subject in subjects:
        tokens = oversight_tokens(keyring, subject)
        table.apply(tokens[0].encode(), ErasureRecord(tokens[0], tuple(tokens), NOW, "dpo", "a", ()).to_json())
        held = held if held is not None else table._tokens  # noqa: SLF001 - the set the policy engine reads
        assert table._tokens is held, "each erasure must grow the same set (a copy per record is O(n) each)"  # noqa: SLF001
    assert all(table.erased(subject) for subject in subjects) and not table.erased("999999990")


def test_consent_entries_are_compact_and_answer_the_latest_change() -> None:
    schemas = LocalSchemas()
    catalog = load_catalog(PROJECT_ROOT / "schemas")
    encoder = encoder_for(schemas, "consent.changes-value", catalog.events["consent.changed"].avro)
    table = ConsentTable(Decoder(schemas))
    values = [change(encoder, str(200_000_000 + i), "scientific_research", "granted", NOW) for i in range(5_000)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, value in enumerate(values):
        table.apply(f"k{i}:research".encode(), value)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / len(values) < 300, f"{grown / len(values):.0f} bytes per consent entry"
    assert table.get("200000007", "scientific_research").status == "granted"
    table.apply(b"k7:research", change(encoder, "200000007", "scientific_research", "withdrawn", NOW))
    assert table.get("200000007", "scientific_research").status == "withdrawn"
    table.apply(b"k8:research", b"\x00garbage")  # unreadable: what its key carried counts as withdrawn
    assert table.get("200000008", "scientific_research").status == "withdrawn"
    assert table.get("200000009", "scientific_research").status == "granted"


def test_a_worker_refuses_a_state_topic_whose_partitions_changed(tmp_path: Path) -> None:
    record = tmp_path / "state-partitions.json"
    check_partitions({"consent.changes": 6, "erasures": 6}, record)  # first start: recorded
    check_partitions({"consent.changes": 6, "erasures": 6}, record)  # unchanged: starts
    with pytest.raises(RepartitionedStateTopic, match=r"topic consent.changes has 12 partitions, 6 .*recreate consent.changes with 6"):
        check_partitions({"consent.changes": 12, "erasures": 6}, record)
