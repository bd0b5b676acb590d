"""`shared_bank_account`: one bank account receives benefit claims of `MIN_CLAIMANTS` or more
distinct claimants in the same period; every one of them is flagged."""

from __future__ import annotations

from consumers import ddl
from consumers.fraud.registry import Columns, Rule

KIND = "shared_bank_account"
MIN_CLAIMANTS = 3

CLAIMS = ddl.table_name("welfare.benefit_claimed")


def select_sql(database: str, columns: Columns, where: str = "1") -> str:
    # One read of the claims: each (account, period) with its distinct claimants, kept when they are
    # `MIN_CLAIMANTS` or more, then one row per claimant (ARRAY JOIN). No FINAL: the distinct
    # claimants count each claimant once however many copies of an event have landed (copies share
    # subject, period and account), and without it ClickHouse reads the few accounts a run needs from
    # the projection ordered by account and period (consumers.fraud.layout). Reading the accounts
    # once, not once for the claimants and again for their count, halves the primary-key analysis of
    # the touched keys, which is most of an incremental run's cost on a large table (bench.fraud).
    claims = ddl.qualified(database, CLAIMS)
    return f"""
            SELECT '{KIND}' AS kind, subject, period,
                   toJSONString(map('bank_account', bank_account, 'claimants', toString(length(claimants)))) AS details
            FROM (SELECT bank_account, period, groupUniqArray(national_id) AS claimants FROM {claims}
                  WHERE {where} AND bank_account IS NOT NULL AND period IS NOT NULL
                  GROUP BY bank_account, period HAVING length(claimants) >= {MIN_CLAIMANTS})
            ARRAY JOIN claimants AS subject"""


RULE = Rule(
    kind=KIND,
    doc=f"one bank account receives benefits of {MIN_CLAIMANTS} or more claimants in the same period",
    needs={CLAIMS: ("national_id", "period", "bank_account")},
    sql=select_sql,
    scope=("bank_account", "period"),
)
