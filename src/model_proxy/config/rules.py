"""rules.json: which models run by themselves on which new studies (prefetch, docs/jobs.md).

Optional, next to models.json; loaded with servers.json and models.json into one
:class:`ProxyConfig`, so a reload puts all of them in force together or none::

    {"rules": [{"name": "chest CT lungs", "model": "<models.json uuid>",
                "server": "<servers.json uuid, optional: every server>",
                "level": "series",
                "match": {"Modality": "CT",
                          "SeriesDescription": {"regex": "(?i)lung|chest"},
                          "minInstances": 20},
                "store": false}]}

Other tools write this file, so its shape is fixed; fields we add are optional.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

from pydicom.datadict import keyword_dict

from .checks import describe
from .enums import Level
from .schema import ModelConfig, ServerConfig
from .spelling import near_miss, unknown_fields

RULES_FILE = "rules.json"
MIN_INSTANCES = "minInstances"

RULE_FIELDS: dict[str, str] = {
    "name": "a non-empty string, unique in the file",
    "model": "the UUID of a model of models.json",
    "server": "the UUID of a server of servers.json (optional: every server)",
    "level": '"study" or "series"',
    "match": 'an object of DICOM keywords, like {"Modality": "CT", "minInstances": 20}',
    "store": "true or false",
}
_FILE_FIELDS = {"rules": "a list of rules"}

# A DICOM attribute value as a QIDO answer or a file header gives it: one string, or
# several (ModalitiesInStudy, a multi-valued attribute).
AttributeValue = str | tuple[str, ...]


class RuleLevel(StrEnum):
    """What one job of a rule covers: the whole study, or each matching series."""

    STUDY = "study"
    SERIES = "series"

    @property
    def model_level(self) -> Level:
        return Level.STUDY if self is RuleLevel.STUDY else Level.SERIES


@dataclass(frozen=True)
class Condition:
    """One key of ``match``: an exact (case-sensitive) value or a regular expression."""

    keyword: str
    equals: str | None = None
    pattern: re.Pattern[str] | None = None

    def matches(self, value: AttributeValue | None) -> bool:
        """True if the value, or one of several values, fits."""
        if value is None:
            return False
        values = (value,) if isinstance(value, str) else value
        if self.pattern is not None:
            return any(self.pattern.search(one) for one in values)
        return self.equals in values


@dataclass(frozen=True)
class PrefetchRule:
    name: str
    model: str
    level: RuleLevel
    server: str | None = None
    conditions: tuple[Condition, ...] = ()
    min_instances: int = 0
    store: bool = False

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(condition.keyword for condition in self.conditions)

    def applies_to(self, server_id: str) -> bool:
        return self.server is None or self.server == server_id

    def matches(self, attributes: Sequence[Mapping[str, AttributeValue]], instances: int) -> bool:
        """Every condition holds in one of ``attributes`` (a series' own, or a study's and
        each of its series'), and there are at least ``minInstances`` instances."""
        if instances < self.min_instances:
            return False
        return all(
            any(condition.matches(found.get(condition.keyword)) for found in attributes)
            for condition in self.conditions
        )


@cache
def _keywords() -> frozenset[str]:
    return frozenset(keyword_dict)


def parse_rules(
    data: object,
    source: str,
    models: Mapping[str, ModelConfig],
    servers: Mapping[str, ServerConfig],
) -> tuple[tuple[PrefetchRule, ...], list[str], list[str]]:
    """The rules of the parsed content of rules.json: ``(rules, errors, warnings)``."""
    errors: list[str] = []
    warnings: list[str] = []
    if not isinstance(data, dict):
        errors.append(f'{source}: expected an object like {{"rules": [...]}}, got {describe(data)}')
        return (), errors, warnings
    misspelt, unknown = unknown_fields(source, data, _FILE_FIELDS)
    errors += misspelt
    warnings += unknown
    entries = data.get("rules", [])
    if not isinstance(entries, list):
        errors.append(f'{source}, field "rules": expected a list of rules, got {describe(entries)}')
        return (), errors, warnings
    rules: list[PrefetchRule] = []
    names: set[str] = set()
    for index, raw in enumerate(entries):
        where = f"{source}: rule {index + 1}"
        if not isinstance(raw, dict):
            errors.append(
                f"{where}: expected an object with name, model and level, got {describe(raw)}"
            )
            continue
        name = raw.get("name")
        if isinstance(name, str) and name.strip():
            where = f'{source}: rule "{name}"'
            if name in names:
                errors.append(f"{where}: another rule has the same name; names must be unique")
            names.add(name)
        problems: list[str] = []
        rule = _parse_rule(raw, where, models, servers, problems, warnings)
        errors += problems
        if rule is not None and not problems:
            rules.append(rule)
    return tuple(rules), errors, warnings


def _parse_rule(
    raw: Mapping[str, Any],
    where: str,
    models: Mapping[str, ModelConfig],
    servers: Mapping[str, ServerConfig],
    errors: list[str],
    warnings: list[str],
) -> PrefetchRule | None:
    misspelt, unknown = unknown_fields(where, raw, RULE_FIELDS)
    errors += misspelt
    warnings += unknown

    def problem(field: str, message: str) -> None:
        errors.append(f'{where}, field "{field}": {message}')

    name, model_id, server_id = raw.get("name"), raw.get("model"), raw.get("server")
    if not isinstance(name, str) or not name.strip():
        problem("name", f"expected {RULE_FIELDS['name']}, got {describe(name)}")
    level: RuleLevel | None = None
    raw_level = raw.get("level")
    if raw_level in {member.value for member in RuleLevel}:
        level = RuleLevel(raw_level)
    else:
        problem("level", f'expected "study" or "series", got {describe(raw_level)}')
    model = models.get(model_id) if isinstance(model_id, str) else None
    if model is None:
        problem("model", f"{describe(model_id)} is not a model of models.json")
    elif level is not None and level.model_level not in model.supports:
        problem(
            "level", f'"{level}": model {model_id} does not support {level.model_level} requests'
        )
    elif model.data_filter:
        problem(
            "model", f"model {model_id} needs data filters (dataFilter), which a rule cannot give"
        )
    if server_id is not None and (not isinstance(server_id, str) or server_id not in servers):
        problem("server", f"{describe(server_id)} is not a server of servers.json")
    store = raw.get("store", False)
    if not isinstance(store, bool):
        problem("store", f"expected true or false, got {describe(store)}")
    conditions, min_instances = _parse_match(raw.get("match", {}), problem)
    if errors or level is None or not isinstance(name, str) or not isinstance(model_id, str):
        return None
    return PrefetchRule(
        name=name,
        model=model_id,
        level=level,
        server=server_id,
        conditions=conditions,
        min_instances=min_instances,
        store=store,
    )


def _parse_match(match: object, problem: Any) -> tuple[tuple[Condition, ...], int]:
    if not isinstance(match, dict):
        problem("match", f"expected {RULE_FIELDS['match']}, got {describe(match)}")
        return (), 0
    conditions: list[Condition] = []
    min_instances = 0
    for key, value in match.items():
        field = f"match.{key}"
        if key == MIN_INSTANCES:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problem(
                    field, f"expected a whole number of instances, 0 or more, got {describe(value)}"
                )
            else:
                min_instances = value
            continue
        if key not in _keywords():
            # Only names near in length can be near misses: a few hundred, not ~5,000.
            near = [k for k in (*_keywords(), MIN_INSTANCES) if abs(len(k) - len(key)) <= 2]
            meant = near_miss(key, near)
            hint = f'; did you mean "{meant}"?' if meant else ""
            problem(
                field, f"{key!r} is not a DICOM keyword (like Modality, SeriesDescription){hint}"
            )
            continue
        if isinstance(value, str):
            conditions.append(Condition(key, equals=value))
        elif (
            isinstance(value, dict) and set(value) == {"regex"} and isinstance(value["regex"], str)
        ):
            try:
                conditions.append(Condition(key, pattern=re.compile(value["regex"])))
            except re.error as exc:
                problem(field, f"invalid regular expression {value['regex']!r}: {exc}")
        else:
            problem(field, f'expected a string or {{"regex": "..."}}, got {describe(value)}')
    return tuple(conditions), min_instances
