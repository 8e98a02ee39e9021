"""The models.json examples in the docs say what the code does (issue 16, item 14): they
load, and the two-series example model has the same task everywhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from model_proxy.cli.demo import TWO_SERIES_MODEL_ID, write_demo_config
from model_proxy.config import load_config, parse_models

ROOT = Path(__file__).parents[2]
_JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)


def models_examples(doc: Path) -> list[dict[str, object]]:
    """Every ```json block of ``doc`` that is a models.json (entries with a "task")."""
    found = []
    for block in _JSON_BLOCK.findall(doc.read_text()):
        try:
            document = json.loads(block)
        except json.JSONDecodeError:
            continue
        if isinstance(document, dict) and any(
            isinstance(entry, dict) and "task" in entry for entry in document.values()
        ):
            found.append(document)
    return found


@pytest.mark.parametrize("doc", ["docs/model-api.md", "README.md"])
def test_the_two_series_model_has_the_demos_task(doc: str, tmp_path: Path) -> None:
    (tmp_path / "dicom").mkdir()
    write_demo_config(tmp_path, tmp_path / "dicom", "http://127.0.0.1:8011")
    demo_task = load_config(tmp_path).models[TWO_SERIES_MODEL_ID].task
    examples = models_examples(ROOT / doc)
    assert examples, f"no models.json example in {doc}"
    tasks = []
    for example in examples:
        models, _warnings = parse_models(example)
        if TWO_SERIES_MODEL_ID in models:
            tasks.append(models[TWO_SERIES_MODEL_ID].task)
    assert tasks and set(tasks) == {demo_task}, (doc, tasks, demo_task)
