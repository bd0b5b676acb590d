"""Realistic, checkable identifiers for synthetic people: national ids with a check digit,
IBANs with valid mod-97 check digits, postcodes, names and employer registration numbers.

All draw from a caller's `random.Random`, never the global one, so a seed fixes the output.
"""

from __future__ import annotations

import functools
import random

# Weights of the Dutch BSN "11-proof": 9*d1 + 8*d2 + ... + 2*d8 - 1*d9 must be divisible by 11.
_BSN_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)
_BANK_CODES = ("ABNA", "INGB", "RABO", "SNSB", "TRIO", "ASNB", "KNAB", "BUNQ", "RBRB", "FVLB")
# Dutch postcode letters never use F, I, O, Q, U or Y, nor the pairs SA, SD and SS.
_POSTCODE_LETTERS = "ABCDEGHJKLMNPRSTVWXZ"
_POSTCODE_EXCLUDED = frozenset({"SA", "SD", "SS"})
POSTCODES_FILE = "postcodes.v1.txt"  # under schemas/reference/

GIVEN_NAMES = (
    "Emma", "Noah", "Julia", "Lucas", "Mila", "Sem", "Tess", "Daan", "Sophie", "Levi", "Zoë", "Finn",
    "Sara", "Milan", "Anna", "Bram", "Eva", "Luuk", "Lotte", "Thijs", "Fatima", "Mohamed", "Ayşe", "Mehmet",
    "Priya", "Arjun", "Maria", "José", "Wei", "Mei", "Olga", "Piotr", "Ingrid", "Kees", "Johanna", "Willem",
    "Hendrik", "Grietje", "Ahmed", "Noor", "Yara", "Jesse", "Femke", "Ruben", "Lieke", "Stijn",
)
SURNAMES = (
    "de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser", "Smit",
    "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters", "Hendriks", "van Leeuwen", "Dekker",
    "Brouwer", "de Wit", "Dijkstra", "Smits", "de Graaf", "van der Meer", "Kaya", "Yilmaz", "El Amrani",
    "Bouzid", "Nguyen", "Kowalski", "Singh", "Pereira", "Rossi", "Schmidt", "van der Linden", "Kok", "Jacobs",
    "Willems", "Verbeek", "Postma", "Kuipers", "Veenstra", "Kramer", "van Wijk", "Prins",
)


def bsn_check_digit(first_eight: str) -> int | None:
    """The ninth digit that makes `first_eight` a valid national id, or None when none exists."""
    total = sum(int(digit) * weight for digit, weight in zip(first_eight, _BSN_WEIGHTS, strict=False))
    check = total % 11
    return None if check == 10 else check


def is_valid_national_id(value: str) -> bool:
    """Nine digits passing the 11-proof."""
    if len(value) != 9 or not value.isdigit():
        return False
    return sum(int(digit) * weight for digit, weight in zip(value, _BSN_WEIGHTS, strict=True)) % 11 == 0


def national_id(rng: random.Random) -> str:
    """A random national id (nine digits, 11-proof check digit, no leading zero)."""
    while True:
        first_eight = str(rng.randrange(10_000_000, 100_000_000))
        check = bsn_check_digit(first_eight)
        if check is not None:
            return first_eight + str(check)


def _iban_number(text: str) -> int:
    return int("".join(str(int(char, 36)) for char in text))


def iban_check_digits(country: str, bban: str) -> str:
    """ISO 13616 check digits: 98 - (bban + country + '00' as a number) mod 97."""
    return f"{98 - _iban_number(bban + country + '00') % 97:02d}"


def is_valid_iban(value: str) -> bool:
    """An IBAN whose check digits pass mod 97 (ISO 13616)."""
    compact = value.replace(" ", "")
    if len(compact) < 15 or not compact[:2].isalpha() or not compact[2:4].isdigit() or not compact.isalnum():
        return False
    return _iban_number(compact[4:] + compact[:4]) % 97 == 1


def iban(rng: random.Random) -> str:
    """A random Dutch-format IBAN: NLkk BANK 0123456789, with valid check digits."""
    bban = rng.choice(_BANK_CODES) + f"{rng.randrange(10**10):010d}"
    return "NL" + iban_check_digits("NL", bban) + bban


@functools.cache
def known_postcodes() -> dict[int, tuple[str, ...]]:
    """The letter pairs of each four-digit area in the known-postcodes reference set (the file the
    quality contracts check postcodes against, `schemas/reference/postcodes.v1.txt`)."""
    from backbone.settings import PROJECT_ROOT

    areas: dict[int, list[str]] = {}
    for line in (PROJECT_ROOT / "schemas" / "reference" / POSTCODES_FILE).read_text().splitlines():
        if line and not line.startswith("#"):
            digits, letters = line.split()
            areas.setdefault(int(digits), []).append(letters)
    return {area: tuple(pairs) for area, pairs in areas.items()}


def postcode(rng: random.Random) -> str:
    """A Dutch-format postcode, `1234 AB`, from the known postcodes: the area drawn evenly, one of its
    letter pairs (the same draws as any well-formed postcode, so a seed's other values stay as they were)."""
    while True:
        letters = rng.choice(_POSTCODE_LETTERS) + rng.choice(_POSTCODE_LETTERS)
        if letters not in _POSTCODE_EXCLUDED:
            area = rng.randrange(1000, 10000)
            pairs = known_postcodes()[area]
            return f"{area} {pairs[_POSTCODE_LETTERS.index(letters[0]) % len(pairs)]}"


def unknown_postcode(known: str) -> str:
    """A well-formed postcode of the same area that is not a known one (no known pair starts with Z)."""
    return f"{known[:4]} ZZ"


def full_name(rng: random.Random) -> str:
    return f"{rng.choice(GIVEN_NAMES)} {rng.choice(SURNAMES)}"


def employer_id(rng: random.Random) -> str:
    """An eight-digit business registration number (not personal data)."""
    return f"{rng.randrange(10_000_000, 100_000_000)}"


def reference(rng: random.Random, prefix: str) -> str:
    """An opaque reference such as a consent id or an incident number: `<prefix>-<12 hex>`."""
    return f"{prefix}-{rng.getrandbits(48):012x}"


__all__ = [
    "GIVEN_NAMES", "SURNAMES", "bsn_check_digit", "employer_id", "full_name", "iban", "iban_check_digits",
    "is_valid_iban", "is_valid_national_id", "known_postcodes", "national_id", "postcode", "reference", "unknown_postcode",
]
