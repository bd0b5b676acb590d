"""`claim_after_death`: a benefit claimed for a period after the month of a registered death.

The month of death comes from `date_of_death` however the agreement releases it: a kept date, a
month string, or a year (then December of that year, so only claims of later years match).
"""

from __future__ import annotations

from consumers import ddl
from consumers.fraud.registry import Columns, Rule

KIND = "claim_after_death"

CLAIMS = ddl.table_name("welfare.benefit_claimed")
DEATHS = ddl.table_name("registry.death_registered")


def _base(ch_type: str) -> str:
    for wrapper in ("LowCardinality(", "Nullable("):
        if ch_type.startswith(wrapper):
            ch_type = ch_type[len(wrapper):-1]
    return ch_type


def death_period_sql(column: str, ch_type: str) -> str:
    """`YYYY-MM` of the death from a kept date, a month string or a year (then its December)."""
    base = _base(ch_type)
    if base.startswith(("Date", "DateTime")):
        return f"formatDateTime({column}, '%Y-%m')"
    if base == "String":
        return f"substring({column}, 1, 7)"
    if base.startswith(("Int", "UInt")):
        return f"concat(toString({column}), '-12')"
    raise ValueError(f"date_of_death of type {ch_type} cannot give a period")


def select_sql(database: str, columns: Columns, where: str = "1") -> str:
    # Deaths are rare: the claims are read only for the (touched) subjects with a registered death
    # (the `IN` over the deaths is built before the claims are read, and their primary key prunes by
    # it), not for every touched claimant, whose claims were most of this rule's reading. No FINAL:
    # copies of a claim share subject, period and benefit, and of a death its date, so neither the
    # claims' (subject, period) nor the earliest death changes with them.
    claims, deaths = ddl.qualified(database, CLAIMS), ddl.qualified(database, DEATHS)
    died = death_period_sql("date_of_death", columns[DEATHS]["date_of_death"])
    benefit = "toString(benefit_type)" if "benefit_type" in columns.get(CLAIMS, {}) else "''"
    dead = f"SELECT national_id FROM {deaths} PREWHERE {where} WHERE date_of_death IS NOT NULL"
    return f"""
            SELECT '{KIND}' AS kind, w.national_id AS subject, w.period AS period,
                   toJSONString(map('benefit_type', w.benefit, 'died_in_period', d.died)) AS details
            FROM (SELECT national_id, period, any({benefit}) AS benefit FROM {claims}
                  PREWHERE national_id IN ({dead}) GROUP BY national_id, period) AS w
            INNER JOIN (SELECT national_id, min({died}) AS died FROM {deaths}
                        PREWHERE {where} WHERE date_of_death IS NOT NULL GROUP BY national_id) AS d
            ON w.national_id = d.national_id
            WHERE w.period > d.died"""


RULE = Rule(
    kind=KIND,
    doc="benefit claimed for a period after the month of a registered death",
    needs={CLAIMS: ("national_id", "period"), DEATHS: ("national_id", "date_of_death")},
    sql=select_sql,
    scope=("national_id",),
)
