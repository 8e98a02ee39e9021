"""Near misses of a known field name: ``statusUrl`` for ``statusUri``, ``URI`` for ``uri``.

A misspelt field would otherwise be ignored as unknown, and the entry silently lose
what it configures (a model its inputs); a field far from every known one stays a
warning, so a file written for a newer version still loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def near_miss(name: str, known: Iterable[str]) -> str | None:
    """The known field ``name`` is probably a misspelling of, or None.

    Case is ignored; beyond that, one edit (insert, delete, replace or swap two
    neighbours) for names up to 4 characters, two for longer ones.

    >>> near_miss("statusUrl", ["uri", "statusUri"])
    'statusUri'
    >>> near_miss("comment", ["uri", "statusUri"]) is None
    True
    """
    allowed = 1 if len(name) <= 4 else 2
    best: tuple[int, str] | None = None
    for candidate in known:
        distance = edit_distance(name.lower(), candidate.lower())
        if distance <= allowed and (best is None or distance < best[0]):
            best = (distance, candidate)
    return best[1] if best is not None else None


def edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance: Levenshtein plus adjacent transpositions."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[len(b)]


def unknown_fields(
    where: str, raw: Mapping[str, Any], fields: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """Errors for near misses of a known field, a warning for the other unknown ones."""
    errors, unknown = [], []
    for name in raw:
        if name in fields:
            continue
        meant = near_miss(name, fields)
        if meant is None or meant in raw:
            unknown.append(name)
        else:
            errors.append(f'{where}: unknown field "{name}"; did you mean "{meant}"?')
    warnings = []
    if unknown:
        names = ", ".join(f'"{name}"' for name in unknown)
        warnings.append(f"{where}: unknown field(s) {names} ignored")
    return errors, warnings
