"""rules.json (prefetch on arrival): the issue's example loads, every mistake is named
with the rule it is in, and a rule matches exactly as docs/jobs.md says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from config_cases import CONTRACT_MODELS, M1, M2, S1, S2, load_errors, only, write_config

from model_proxy.config import ConfigError, PrefetchRule, RuleLevel, load_config
from model_proxy.config.rules import Condition

SERVERS = {
    S1: {"uri": "http://pacs.local/dicom-web", "isDefault": True},
    S2: {"uri": "file:///srv"},
}
# M1 supports /studies/series; M3 /studies only.
M3 = "0b7c4f2e-8d1a-4e6b-a3c5-9f8e7d6c5b4a"
MODELS = {
    M1: CONTRACT_MODELS[M1],
    M2: CONTRACT_MODELS[M2],
    M3: {"uri": "http://localhost:8011/p", "task": "prediction", "supports": ["/studies"]},
}
# The shape of the issue, verbatim but for the UUIDs.
EXAMPLE: dict[str, Any] = {
    "rules": [
        {
            "name": "chest CT lungs",
            "model": M1,
            "server": S1,
            "level": "series",
            "match": {
                "Modality": "CT",
                "SeriesDescription": {"regex": "(?i)lung|chest"},
                "minInstances": 20,
            },
            "store": False,
        }
    ]
}


def write_rules(folder: Path, rules: object) -> Path:
    write_config(folder, SERVERS, MODELS)
    (folder / "rules.json").write_text(json.dumps(rules))
    return folder


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "model": M1, "level": "series", **fields}


def test_the_issues_example_loads(tmp_path: Path) -> None:
    config = load_config(write_rules(tmp_path, EXAMPLE))
    (loaded,) = config.rules
    assert loaded.name == "chest CT lungs" and loaded.model == M1 and loaded.server == S1
    assert loaded.level is RuleLevel.SERIES and loaded.min_instances == 20
    assert loaded.keywords == ("Modality", "SeriesDescription") and loaded.store is False


def test_no_rules_file_means_no_rules(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, SERVERS, MODELS)).rules == ()


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            {"rules": [rule(model="8c5e3a4b-0000-4000-8000-000000000000")]},
            'rule "r", field "model": "8c5e3a4b-0000-4000-8000-000000000000" is not a model',
        ),
        (
            {"rules": [rule(server="8c5e3a4b-0000-4000-8000-000000000000")]},
            'rule "r", field "server": "8c5e3a4b-0000-4000-8000-000000000000" is not a server',
        ),
        (
            {"rules": [rule(match={"SeriesDescription": {"regex": "(lung"}})]},
            'rule "r", field "match.SeriesDescription": invalid regular expression',
        ),
        (
            {"rules": [{"name": "r", "modle": M1, "level": "series"}]},
            'rule "r": unknown field "modle"; did you mean "model"?',
        ),
        (
            {"rules": [rule(match={"Modalty": "CT"})]},
            'rule "r", field "match.Modalty": \'Modalty\' is not a DICOM keyword'
            ' (like Modality, SeriesDescription); did you mean "Modality"?',
        ),
        (
            {"rules": [rule(match={"minInstance": 3})]},
            'did you mean "minInstances"?',
        ),
        (
            {"rules": [rule(match={"minInstances": -1})]},
            'rule "r", field "match.minInstances": expected a whole number',
        ),
        (
            {"rules": [rule(match={"Modality": 3})]},
            'rule "r", field "match.Modality": expected a string or {"regex": "..."}, got 3',
        ),
        ({"rules": [rule(level="image")]}, 'rule "r", field "level": expected "study" or "series"'),
        (
            {"rules": [rule(model=M3)]},
            f'rule "r", field "level": "series": model {M3} does not support /studies/series',
        ),
        (
            {"rules": [rule(model=M2, level="study")]},
            f'rule "r", field "model": model {M2} needs data filters',
        ),
        ({"rules": [rule(store="yes")]}, 'rule "r", field "store": expected true or false'),
        ({"rules": [rule(), rule()]}, 'rule "r": another rule has the same name'),
        ({"rules": [{"model": M1, "level": "series"}]}, 'rule 1, field "name": expected'),
        ({"rulez": []}, 'unknown field "rulez"; did you mean "rules"?'),
        ([], 'expected an object like {"rules": [...]}'),
    ],
)
def test_mistakes_are_named(tmp_path: Path, rules: object, expected: str) -> None:
    messages = load_errors(write_rules(tmp_path, rules))
    assert all(m.startswith(str(tmp_path / "rules.json")) for m in messages), messages
    assert any(expected in message for message in messages), messages


def test_invalid_json_is_an_error_with_its_place(tmp_path: Path) -> None:
    write_config(tmp_path, SERVERS, MODELS)
    (tmp_path / "rules.json").write_text('{"rules": [')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert "rules.json: invalid JSON at line 1" in only(info.value.messages)


def _rule(
    *conditions: Condition, level: RuleLevel = RuleLevel.SERIES, minimum: int = 0
) -> PrefetchRule:
    return PrefetchRule("r", M1, level, conditions=conditions, min_instances=minimum)


def test_a_string_is_equal_case_sensitive_and_a_regex_searches() -> None:
    import re

    ct = _rule(Condition("Modality", equals="CT"))
    assert ct.matches([{"Modality": "CT"}], 1)
    assert not ct.matches([{"Modality": "ct"}], 1)
    assert not ct.matches([{}], 1)  # an attribute the PACS did not give does not match
    lungs = _rule(Condition("SeriesDescription", pattern=re.compile("(?i)lung")))
    assert lungs.matches([{"SeriesDescription": "Thorax LUNG 1mm"}], 1)
    assert not lungs.matches([{"SeriesDescription": "Abdomen"}], 1)


def test_every_key_must_match_and_min_instances_counts() -> None:
    both = _rule(
        Condition("Modality", equals="CT"),
        Condition("BodyPartExamined", equals="CHEST"),
        minimum=20,
    )
    attributes = {"Modality": "CT", "BodyPartExamined": "CHEST"}
    assert both.matches([attributes], 20)
    assert not both.matches([attributes], 19)
    assert not both.matches([{"Modality": "CT", "BodyPartExamined": "HEAD"}], 20)


def test_a_study_matches_through_any_of_its_series_and_multiple_values() -> None:
    study_rule = _rule(Condition("Modality", equals="CT"), level=RuleLevel.STUDY)
    assert study_rule.matches(
        [{"StudyDescription": "x"}, {"Modality": "SR"}, {"Modality": "CT"}], 1
    )
    assert study_rule.matches([{"ModalitiesInStudy": ("CT", "SR"), "Modality": ("CT", "SR")}], 1)
    assert not study_rule.matches([{"Modality": "MR"}], 1)


def test_check_config_lists_the_rules_and_names_a_broken_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_proxy.cli.commands import check_config
    from model_proxy.cli.options import CommandError

    assert check_config(write_rules(tmp_path, EXAMPLE)) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'rules.json'}: 1 prefetch rules" in out
    assert f"'chest CT lungs': model {M1}, each series, on server {S1}" in out
    write_rules(tmp_path, {"rules": [rule(match={"SeriesDescription": {"regex": "(a"}})]})
    with pytest.raises(CommandError) as info:
        check_config(tmp_path)
    assert 'rule "r", field "match.SeriesDescription": invalid regular expression' in str(
        info.value
    )
