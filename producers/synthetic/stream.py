"""The synthetic event stream: month by month, every agency's events about one seeded population.

Within a month the order is shuffled but causal across months: a death is registered in its month
and every planted claim after death comes in a later month. Event ids and timestamps come from the
seed too, so two runs with the same arguments yield the same events. Filtering by agency changes
which events are yielded, never their content.
"""

from __future__ import annotations

import calendar
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator
from datetime import UTC, date, datetime

from consumers.fraud.rules.claim_after_death import KIND as CLAIM_AFTER_DEATH
from consumers.fraud.rules.shared_bank_account import KIND as SHARED_BANK_ACCOUNT
from consumers.fraud.rules.shared_bank_account import MIN_CLAIMANTS as SHARED_ACCOUNT_MIN_CLAIMANTS
from consumers.fraud.rules.undeclared_income import INCOME_THRESHOLD_EUR, MEANS_TESTED
from consumers.fraud.rules.undeclared_income import KIND as UNDECLARED_INCOME
from producers.synthetic import identities
from producers.synthetic.fraud import FraudCase
from producers.synthetic.governance import CONSENT_PURPOSES, PROFILES, RESEARCH_PURPOSE
from producers.synthetic.population import MONTHLY_INCOME_VARIATION, Person, build_population

TAX, CLAIM, MOVE, DEATH, CONSENT, INCIDENT = range(6)
EVENT_TYPES = {
    TAX: "tax.income_declared",
    CLAIM: "welfare.benefit_claimed",
    MOVE: "registry.address_changed",
    DEATH: "registry.death_registered",
    CONSENT: "consent.changed",
    INCIDENT: "police.incident_reported",
}
AGENCIES = ("tax", "welfare", "registry", "police", "consent")
MAX_MONTHS = 1_200
# By default the data starts this many months before the current one: a year of demo data ends about
# now and none of it is older than a 365-day retention counted from the event's time.
RECENT_MONTHS = 11

_BENEFIT_AMOUNTS = {
    "income_support": (950.0, 1_350.0),
    "housing_allowance": (150.0, 450.0),
    "unemployment": (1_200.0, 2_200.0),
    "disability": (800.0, 1_500.0),
}
_OFFENCES = ("theft", "burglary", "assault", "fraud", "vandalism", "traffic", "drugs", "other")
_OFFENCE_WEIGHTS = (30, 10, 8, 6, 12, 20, 6, 8)
_CHANNELS = ("web", "app", "letter", "counter")


def _death_probability(person: Person, year: int) -> float:
    age = year - person.date_of_birth.year
    return 0.0004 if age < 60 else 0.002 if age < 75 else 0.006


def recent_start(today: date | None = None, months: int = RECENT_MONTHS) -> str:
    """The month (YYYY-MM) `months` before the one `today` (default: today, UTC) falls in."""
    today = today or datetime.now(UTC).date()
    index = today.year * 12 + today.month - 1 - months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _month_start(start: str, index: int) -> tuple[str, int, int]:
    """(period, start in epoch millis, length in millis) of month `index` after `start` (YYYY-MM)."""
    year, month = (int(part) for part in start.split("-"))
    month += index
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    begin = datetime(year, month, 1, tzinfo=UTC)
    days = calendar.monthrange(year, month)[1]
    return f"{year:04d}-{month:02d}", int(begin.timestamp() * 1000), days * 86_400_000


def _date_of(millis: int) -> date:
    return datetime.fromtimestamp(millis / 1000, tz=UTC).date()


class SyntheticStream:
    """Iterator of `(event_type, record)`; `ground_truth` lists the planted cases yielded so far.

    A case is listed once every event that shows it has been yielded (for an undeclared income
    both the tax declaration and the claim; for a claim after death the death and the claim).
    """

    def __init__(
        self,
        seed: int = 0,
        population: int = 10_000,
        events: int = 100_000,
        fraud_rate: float = 0.01,
        start: str | None = None,
        periods: int | None = None,
        agencies: Collection[str] | None = None,
    ) -> None:
        start = start or recent_start()
        if population < 1:
            raise ValueError("population must be at least 1")
        if events < 0:
            raise ValueError("events must not be negative")
        if not 0 <= fraud_rate <= 0.2:
            raise ValueError("fraud_rate must be between 0 and 0.2")
        if periods is not None and periods < 1:
            raise ValueError("periods must be at least 1")
        try:
            _month_start(start, 0)
        except ValueError:
            raise ValueError(f"start must be a month, YYYY-MM, not {start!r}") from None
        unknown = set(agencies or ()) - set(AGENCIES)
        if unknown:
            raise ValueError(f"unknown agencies {sorted(unknown)}; known: {', '.join(AGENCIES)}")
        self.seed = seed
        self.events = events
        self.start = start
        self.periods = periods
        self.agencies = frozenset(agencies) if agencies else frozenset(AGENCIES)
        self.population = build_population(seed, population, fraud_rate, datetime.strptime(start, "%Y-%m").date())
        self.ground_truth: list[FraudCase] = []
        self.counts: Counter[str] = Counter()
        self._recorded: set[tuple[str, str, str]] = set()
        self._declared: dict[tuple[int, str], float] = defaultdict(float)
        self._claimed: dict[tuple[int, str], str] = {}
        self._ring_claimants: dict[tuple[int, str], list[int]] = defaultdict(list)
        self._death_seen: set[int] = set()
        self._iterator = self._run()

    def __iter__(self) -> SyntheticStream:
        return self

    def __next__(self) -> tuple[str, dict]:
        return next(self._iterator)

    @property
    def emitted(self) -> int:
        return sum(self.counts.values())

    def _run(self) -> Iterator[tuple[str, dict]]:
        kept = {kind for kind, event_type in EVENT_TYPES.items() if event_type.split(".", 1)[0] in self.agencies}
        months = self.periods or MAX_MONTHS
        produced = 0
        for month in range(months):
            if produced >= self.events:
                return
            for kind, event_type, record, index in self._month(month, kept):
                if kind not in kept:
                    continue
                self.counts[event_type] += 1
                self._note(kind, index, record, month)
                yield event_type, record
                produced += 1
                if produced >= self.events:
                    return

    def _month(self, month: int, kept: set[int]) -> Iterator[tuple[int, str, dict, int]]:
        rng = random.Random(f"{self.seed}:{month}")
        period, begin, length = _month_start(self.start, month)
        year = int(period[:4])
        people = self.population.people
        tasks: list[tuple[int, int, str | None]] = []
        alive = 0
        for index, person in enumerate(people):
            if person.died_in is not None:
                if person.role == CLAIM_AFTER_DEATH and person.died_in < month <= person.died_in + person.claims_after_death:
                    tasks.extend((CLAIM, index, benefit) for benefit in person.benefits)
                continue
            dies = person.death_month == month if person.role == CLAIM_AFTER_DEATH else (
                person.honest and rng.random() < _death_probability(person, year))
            if dies:
                person.died_in = month
                tasks.append((DEATH, index, None))
                continue
            alive += 1
            if person.base_income:
                tasks.append((TAX, index, None))
            for benefit in person.benefits:
                if person.role == SHARED_BANK_ACCOUNT or rng.random() < (0.7 if person.role == UNDECLARED_INCOME else 0.95):
                    tasks.append((CLAIM, index, benefit))
            if rng.random() < 0.008:
                tasks.append((MOVE, index, None))
            if rng.random() < (0.05 if month == 0 else 0.006):
                tasks.append((CONSENT, index, None))
            if rng.random() < 0.006:
                tasks.append((INCIDENT, index, None))
        # Incidents with no known suspect.
        tasks.extend((INCIDENT, -1, None) for _ in range(int(alive * 0.004 + rng.random())))
        rng.shuffle(tasks)
        count = len(tasks)
        for position, (kind, index, benefit) in enumerate(tasks):
            occurred_at = begin + ((2 * position + 1) * length) // (2 * count)
            event_type = EVENT_TYPES[kind]
            record = {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "event_type": event_type,
                "occurred_at": occurred_at,
                "provider": event_type.split(".", 1)[0],
            }
            self._fill(kind, record, rng, people[index] if index >= 0 else None, benefit, period, occurred_at)
            yield kind, event_type, record, index

    def _fill(self, kind: int, record: dict, rng: random.Random, person: Person | None, benefit: str | None,
              period: str, occurred_at: int) -> None:
        """Add the payload and governance of one event; state changes (moves, consent) apply here."""
        event_type = record["event_type"]
        profile = PROFILES[event_type]
        if kind == TAX:
            assert person is not None
            income = person.base_income * (1 + rng.uniform(-MONTHLY_INCOME_VARIATION, MONTHLY_INCOME_VARIATION))
            record.update(governance=profile.tags(), national_id=person.national_id, name=person.name,
                          employer_id=person.employer_id, period=period, declared_income=round(income, 2),
                          bank_account=person.bank_account)
        elif kind == CLAIM:
            assert person is not None and benefit is not None
            if benefit == "child_benefit":
                amount = 260.0 * max(1, person.household_size - 2)
            else:
                amount = round(rng.uniform(*_BENEFIT_AMOUNTS[benefit]), 2)
            research = person.consent_refs.get(RESEARCH_PURPOSE)
            governance = profile.tags(research, (RESEARCH_PURPOSE,)) if research else profile.tags()
            other_income = person.base_income if person.honest else 0.0
            record.update(governance=governance, national_id=person.national_id, name=person.name,
                          date_of_birth=person.date_of_birth, postcode=person.postcode, benefit_type=benefit,
                          period=period, monthly_amount=amount, bank_account=person.claim_account,
                          household_size=person.household_size, declared_other_income=other_income)
        elif kind == MOVE:
            assert person is not None
            new_postcode = identities.postcode(rng)
            record.update(governance=profile.tags(), national_id=person.national_id, name=person.name,
                          date_of_birth=person.date_of_birth, old_postcode=person.postcode,
                          new_postcode=new_postcode, moved_on=_date_of(occurred_at))
            person.postcode = new_postcode
        elif kind == DEATH:
            assert person is not None
            record.update(governance=profile.tags(), national_id=person.national_id, name=person.name,
                          date_of_birth=person.date_of_birth, date_of_death=_date_of(occurred_at),
                          postcode=person.postcode)
        elif kind == CONSENT:
            assert person is not None
            granted = [purpose for purpose in CONSENT_PURPOSES if purpose in person.consents]
            if granted and (len(granted) == len(CONSENT_PURPOSES) or rng.random() < 0.4):
                purpose, status = rng.choice(granted), "withdrawn"
                consent_id = person.consents.pop(purpose)
            else:
                purpose = rng.choice([p for p in CONSENT_PURPOSES if p not in person.consents])
                status, consent_id = "granted", identities.reference(rng, "CNS")
                person.consents[purpose] = person.consent_refs[purpose] = consent_id
            record.update(governance=profile.tags(consent_id), subject_national_id=person.national_id,
                          purpose=purpose, status=status, at=occurred_at, channel=rng.choice(_CHANNELS))
        else:
            offence = rng.choices(_OFFENCES, weights=_OFFENCE_WEIGHTS)[0]
            record.update(governance=profile.tags(), incident_id=identities.reference(rng, "INC"),
                          offence_category=offence,
                          location_postcode=person.postcode if person else identities.postcode(rng),
                          suspect_national_id=person.national_id if person else None)

    def _note(self, kind: int, index: int, record: dict, month: int) -> None:
        """Record planted cases whose evidence is now all in the yielded stream."""
        if index < 0:
            return
        person = self.population.people[index]
        if person.honest:
            return
        if kind == DEATH:
            self._death_seen.add(index)
            return
        period = record.get("period")
        if person.role == UNDECLARED_INCOME and kind in (TAX, CLAIM):
            if kind == TAX:
                self._declared[(index, period)] += record["declared_income"]
            elif record["benefit_type"] in MEANS_TESTED:
                self._claimed[(index, period)] = record["benefit_type"]
            declared = self._declared.get((index, period), 0.0)
            if (index, period) in self._claimed and declared > INCOME_THRESHOLD_EUR:
                self._record(UNDECLARED_INCOME, person, period, {
                    "benefit_type": self._claimed[(index, period)], "declared_income": round(declared, 2),
                    "threshold_eur": INCOME_THRESHOLD_EUR})
        elif person.role == SHARED_BANK_ACCOUNT and kind == CLAIM:
            claimants = self._ring_claimants[(person.ring, period)]
            if index not in claimants:
                claimants.append(index)
            if len(claimants) >= SHARED_ACCOUNT_MIN_CLAIMANTS:
                for member in claimants:
                    self._record(SHARED_BANK_ACCOUNT, self.population.people[member], period, {
                        "bank_account": person.claim_account, "ring": person.ring})
        elif person.role == CLAIM_AFTER_DEATH and kind == CLAIM and index in self._death_seen:
            if person.died_in is not None and month > person.died_in:
                self._record(CLAIM_AFTER_DEATH, person, period, {
                    "benefit_type": record["benefit_type"], "died_in_period": _month_start(self.start, person.died_in)[0]})

    def _record(self, kind: str, person: Person, period: str, details: dict) -> None:
        case = FraudCase(kind, person.national_id, period, details)
        if case.key not in self._recorded:
            self._recorded.add(case.key)
            self.ground_truth.append(case)


def generate(
    seed: int = 0,
    population: int = 10_000,
    events: int = 100_000,
    fraud_rate: float = 0.01,
    start: str | None = None,
    periods: int | None = None,
    agencies: Collection[str] | None = None,
) -> SyntheticStream:
    """Up to `events` synthetic `(event_type, record)` pairs for `population` people from month `start`
    (default `recent_start()`: eleven months before this one) on (for at most `periods` months), only of `agencies` when given; `.ground_truth` fills as you go."""
    return SyntheticStream(seed, population, events, fraud_rate, start, periods, agencies)
