"""The built-in fraud rules, one module each, registered here in the order they run.

Adding a rule: a module beside these declaring its `RULE`, and one entry in `BUILT_IN`.
"""

from __future__ import annotations

from consumers.fraud.registry import register
from consumers.fraud.rules import claim_after_death, shared_bank_account, undeclared_income

BUILT_IN = (undeclared_income.RULE, shared_bank_account.RULE, claim_after_death.RULE)

for _rule in BUILT_IN:
    register(_rule)
