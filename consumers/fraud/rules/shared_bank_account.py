"""`shared_bank_account`: one bank account receives benefit claims of `MIN_CLAIMANTS` or more
distinct claimants in the same period; every one of them is flagged."""

from __future__ import annotations

from consumers import ddl
from consumers.fraud.registry import Columns, Rule

KIND = "shared_bank_account"
MIN_CLAIMANTS = 3

CLAIMS = ddl.table_name("welfare.benefit_claimed")


def select_sql(database: str, columns: Columns, where: str = "1") -> str:
    # No FINAL: GROUP BY and uniqExact count each claimant once however many copies of an event have
    # landed (copies share subject, period and account), and without it ClickHouse reads the few
    # accounts a run needs from the projection ordered by account and period (consumers.fraud.layout;
    # it does not for a SELECT DISTINCT).
    claims = ddl.qualified(database, CLAIMS)
    return f"""
            SELECT '{KIND}' AS kind, w.national_id AS subject, w.period AS period,
                   toJSONString(map('bank_account', w.bank_account, 'claimants', toString(a.claimants))) AS details
            FROM (SELECT national_id, period, bank_account FROM {claims} WHERE {where} GROUP BY national_id, period, bank_account) AS w
            INNER JOIN (SELECT bank_account, period, uniqExact(national_id) AS claimants FROM {claims}
                        WHERE {where} GROUP BY bank_account, period HAVING claimants >= {MIN_CLAIMANTS}) AS a
            ON w.bank_account = a.bank_account AND w.period = a.period"""


RULE = Rule(
    kind=KIND,
    doc=f"one bank account receives benefits of {MIN_CLAIMANTS} or more claimants in the same period",
    needs={CLAIMS: ("national_id", "period", "bank_account")},
    sql=select_sql,
    scope=("bank_account", "period"),
)
