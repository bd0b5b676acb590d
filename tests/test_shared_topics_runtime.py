"""Shared topics of an agreement applied at run time get the configuration start-up gives them:
records carry their released time (CreateTime) and the topic keeps them for the shared retention
plus the released period. Before, the first released record had the broker create the topic with
its defaults."""

from __future__ import annotations

import pytest

from app.local import provision_keyring
from backbone.kafka.topics import Topics, shared_topic, shared_topic_config
from backbone.keys.master import encode_master_key, new_master_key
from backbone.policy.released import released_period_days
from backbone.settings import Settings, load_settings
from processors.app import Enforcement

pytestmark = pytest.mark.integration


def test_an_agreement_applied_at_run_time_gets_shared_topics_configured_as_at_start(settings: Settings, unique: str) -> None:
    master = new_master_key()
    settings = load_settings(**{**settings.model_dump(), "master_key": encode_master_key(master)})
    provision_keyring(settings, master)
    enforcement = Enforcement(settings)
    model = enforcement.charter.agreements[0]
    recipient = f"auditor{unique.replace('-', '')}"[:30]  # a recipient no start-up knew
    agreement = model.model_copy(update={"id": f"{model.id}-{recipient}", "recipient": recipient})

    enforcement.apply_agreement(agreement)

    assert enforcement.engine.charter.get(agreement.id, agreement.version) is not None
    wanted = shared_topic_config(settings, released_period_days(agreement))
    for event_type in agreement.event_types:
        config = Topics(settings).describe(shared_topic(recipient, event_type)).config
        assert {key: config.get(key) for key in wanted} == wanted
