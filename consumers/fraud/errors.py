"""Errors of the fraud rules' registry; each message says what to do next."""

from __future__ import annotations

from backbone.errors import BackboneError


class FraudRuleError(BackboneError):
    """A fraud rule could not be registered or found."""


class UnknownRule(FraudRuleError):
    """No rule of that kind is registered; the message lists the kinds that are."""


class DuplicateRule(FraudRuleError):
    """A rule of that kind is registered already."""
