"""`undeclared_income`: a means-tested benefit claimed for a period in which the person's declared
income (the sum of their `tax.income_declared` for that period) exceeds `INCOME_THRESHOLD_EUR`."""

from __future__ import annotations

from collections.abc import Iterable

from consumers import ddl
from consumers.fraud.registry import Columns, Rule

KIND = "undeclared_income"
# Monthly declared income above which means-tested benefits are not due (EUR per month).
INCOME_THRESHOLD_EUR = 2_500.0
MEANS_TESTED = frozenset({"income_support", "housing_allowance", "unemployment"})

CLAIMS = ddl.table_name("welfare.benefit_claimed")
INCOMES = ddl.table_name("tax.income_declared")


def _literals(values: Iterable[str]) -> str:
    return ", ".join("'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'" for value in sorted(values))


def select_sql(database: str, columns: Columns, where: str = "1") -> str:
    # The incomes are read with FINAL: a redelivered declaration must not count twice in the sum. The
    # claims are not: a (subject, period) has a means-tested claim or not however many copies landed,
    # and FINAL would merge the touched subjects' granules of every part for nothing.
    claims, incomes = ddl.qualified(database, CLAIMS), ddl.qualified(database, INCOMES)
    return f"""
            SELECT '{KIND}' AS kind, c.national_id AS subject, c.period AS period,
                   toJSONString(map('benefit_type', c.benefit, 'declared_income', toString(i.income))) AS details
            FROM (SELECT national_id, period, any(toString(benefit_type)) AS benefit FROM {claims}
                  PREWHERE {where} WHERE toString(benefit_type) IN ({_literals(MEANS_TESTED)}) GROUP BY national_id, period) AS c
            INNER JOIN (SELECT national_id, period, sum(declared_income) AS income FROM {incomes} FINAL
                        PREWHERE {where} GROUP BY national_id, period HAVING income > {INCOME_THRESHOLD_EUR!r}) AS i
            ON c.national_id = i.national_id AND c.period = i.period"""


RULE = Rule(
    kind=KIND,
    doc=f"means-tested benefit claimed while declared income is above {INCOME_THRESHOLD_EUR:,.0f} EUR that month",
    needs={CLAIMS: ("national_id", "period", "benefit_type"), INCOMES: ("national_id", "period", "declared_income")},
    sql=select_sql,
    scope=("national_id", "period"),
)
