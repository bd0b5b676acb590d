"""A synthetic population: who works, who claims which benefits, and who commits which planted fraud.

Roles are fixed up front from the seed so every agency's stream (tax, welfare, registry, ...) talks
about the same people. Honest people are built so they never match a fraud rule: their own bank
account is unique, honest means-tested claimants earn at most ~1,840 EUR a month (well under the
threshold) and people who earn more never claim means-tested benefits, and nobody claims after death.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta

from producers.synthetic import identities
from producers.synthetic.fraud import CLAIM_AFTER_DEATH, SHARED_BANK_ACCOUNT, UNDECLARED_INCOME

HONEST = "honest"
RETIREMENT_AGE = 67
# Honest low earners: base 700-1,700 EUR, +-8% a month -> at most 1,836 EUR.
LOW_INCOME = (700.0, 1_700.0)
# Honest regular earners: never claim means-tested benefits.
REGULAR_INCOME = (2_600.0, 8_000.0)
# Undeclared-income fraudsters: base 3,000-7,000 EUR, -8% at worst -> at least 2,760 EUR > threshold.
FRAUD_INCOME = (3_000.0, 7_000.0)
MONTHLY_INCOME_VARIATION = 0.08


@dataclass(slots=True)
class Person:
    """One synthetic resident and their (mutable) state as the months go by."""

    national_id: str
    name: str
    date_of_birth: date
    postcode: str
    bank_account: str
    household_size: int
    employer_id: str | None = None
    base_income: float = 0.0
    benefits: tuple[str, ...] = ()
    role: str = HONEST
    claim_account: str = ""
    ring: int | None = None
    death_month: int | None = None
    claims_after_death: int = 0
    died_in: int | None = None
    consents: dict[str, str] = field(default_factory=dict)
    # The agency keeps referring to a consent after its withdrawal; the backbone enforces the withdrawal.
    consent_refs: dict[str, str] = field(default_factory=dict)

    @property
    def honest(self) -> bool:
        return self.role == HONEST


@dataclass(slots=True)
class Population:
    people: list[Person]
    mule_accounts: dict[int, str]

    def by_role(self, role: str) -> list[Person]:
        return [person for person in self.people if person.role == role]


def _unique(draw, rng: random.Random, seen: set[str]) -> str:  # noqa: ANN001 - an identities function
    while True:
        value = draw(rng)
        if value not in seen:
            seen.add(value)
            return value


def _age_on(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def _honest_benefits(rng: random.Random, age: int, employed: bool, low_earner: bool, household: int) -> tuple[str, ...]:
    benefits: list[str] = []
    if age < RETIREMENT_AGE and not employed and rng.random() < 0.6:
        benefits += rng.choice([["unemployment"], ["income_support"], ["income_support", "housing_allowance"]])
    elif low_earner and rng.random() < 0.5:
        benefits.append("housing_allowance")
    elif age >= RETIREMENT_AGE and rng.random() < 0.15:
        benefits.append("housing_allowance")
    if household >= 3 and age < RETIREMENT_AGE and rng.random() < 0.6:
        benefits.append("child_benefit")
    if rng.random() < 0.03:
        benefits.append("disability")
    return tuple(benefits)


def fraud_counts(population: int, fraud_rate: float) -> tuple[int, int, int]:
    """How many people commit each fraud kind: (undeclared income, shared account, claim after death)."""
    if fraud_rate <= 0:
        return (0, 0, 0)
    total = round(population * fraud_rate)
    ring_members = max(3, round(total * 0.4))
    after_death = max(1, round(total * 0.2))
    undeclared = max(1, total - ring_members - after_death)
    return (undeclared, ring_members, after_death)


def build_population(seed: int, size: int, fraud_rate: float, reference: date) -> Population:
    """`size` people aged 18-90 on `reference`, with honest roles and planted fraudsters."""
    rng = random.Random(f"{seed}:population")
    ids: set[str] = set()
    accounts: set[str] = set()
    employers = [identities.employer_id(rng) for _ in range(max(5, size // 25))]
    people: list[Person] = []
    for _ in range(size):
        age = min(90, 18 + int(rng.triangular(0, 72, 25)))
        born = reference - timedelta(days=age * 365 + rng.randrange(365) + age // 4)
        household = rng.choices((1, 2, 3, 4, 5, 6), weights=(35, 30, 14, 13, 6, 2))[0]
        employed = age < RETIREMENT_AGE and rng.random() < 0.72
        low_earner = employed and rng.random() < 0.22
        income = 0.0
        if employed:
            low, high = LOW_INCOME if low_earner else REGULAR_INCOME
            income = round(rng.uniform(low, high), 2)
        person = Person(
            national_id=_unique(identities.national_id, rng, ids),
            name=identities.full_name(rng),
            date_of_birth=born,
            postcode=identities.postcode(rng),
            bank_account=_unique(identities.iban, rng, accounts),
            household_size=household,
            employer_id=rng.choice(employers) if employed else None,
            base_income=income,
            benefits=_honest_benefits(rng, _age_on(born, reference), employed, low_earner, household),
        )
        person.claim_account = person.bank_account
        people.append(person)

    undeclared, ring_members, after_death = fraud_counts(size, fraud_rate)
    working = [p for p in people if _age_on(p.date_of_birth, reference) < RETIREMENT_AGE]
    if undeclared + ring_members + after_death > len(working):
        raise ValueError(f"population {size} is too small for fraud rate {fraud_rate}; raise population or lower fraud_rate")
    chosen = rng.sample(working, undeclared + ring_members + after_death)
    for person in chosen[:undeclared]:
        person.role = UNDECLARED_INCOME
        person.employer_id = rng.choice(employers)
        person.base_income = round(rng.uniform(*FRAUD_INCOME), 2)
        person.benefits = (rng.choice(("income_support", "housing_allowance")),)
    mule_accounts: dict[int, str] = {}
    members = chosen[undeclared:undeclared + ring_members]
    ring = 0
    while members:
        # Rings of 3 to 5 unrelated claimants paid into one mule account nobody in the population owns.
        take = len(members) if len(members) < 6 else rng.randint(3, min(5, len(members) - 3))
        mule_accounts[ring] = _unique(identities.iban, rng, accounts)
        for person in members[:take]:
            person.role = SHARED_BANK_ACCOUNT
            person.ring = ring
            person.employer_id = None
            person.base_income = 0.0
            person.benefits = ("income_support",)
            person.claim_account = mule_accounts[ring]
        members = members[take:]
        ring += 1
    for person in chosen[undeclared + ring_members:]:
        person.role = CLAIM_AFTER_DEATH
        person.employer_id = None
        person.base_income = 0.0
        person.benefits = (rng.choice(("income_support", "housing_allowance")),)
        person.death_month = rng.randint(0, 1)
        person.claims_after_death = rng.randint(2, 3)
    return Population(people, mule_accounts)
