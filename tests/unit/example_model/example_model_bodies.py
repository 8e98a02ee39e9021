"""The example model's test bed: a sample study, its instances in the wire format, and
every body shape of the format with what the model should see in it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from model_proxy.sample_data import SampleStudy

ROWS, COLUMNS = 64, 80  # not square, so a transposed mask shows


@dataclass(frozen=True)
class Shape:
    """One body shape of the wire format and what the model should see in it."""

    name: str
    body: Any
    sent: dict[str, list[str]]  # series UID -> SOP UIDs sent
    single: set[str]  # SOP UIDs sent as one bare instance string
    summary: bool  # series/study metadata expected


def encode(data: bytes, spaced: bool = False) -> str:
    # json.dumps puts a space after each comma: models must accept whitespace.
    return json.dumps(list(data)) if spaced else orjson.dumps(list(data)).decode()


SHAPES = [
    "instance",
    "series",
    "study",
    "study-filtered",
    "study-filtered-instances",
    "series-filtered",
]


def body_shapes(study: SampleStudy, wire: dict[str, str]) -> dict[str, Shape]:
    one, two = study.series
    a, b = list(one.sop_uids), list(two.sop_uids)
    rng = random.Random(1)
    shuffled_a = rng.sample(a, len(a))
    mixed = rng.sample(a + b, len(a) + len(b))
    return {
        shape.name: shape
        for shape in [
            Shape("instance", wire[a[3]], {one.series_uid: [a[3]]}, {a[3]}, False),
            Shape("series", [wire[s] for s in shuffled_a], {one.series_uid: a}, set(), True),
            Shape(
                "study",
                [wire[s] for s in mixed],
                {one.series_uid: a, two.series_uid: b},
                set(),
                True,
            ),
            Shape(
                "study-filtered",
                {
                    "series-one": {"data": [wire[s] for s in shuffled_a]},
                    "series-two": {"data": [wire[s] for s in reversed(b)]},
                },
                {one.series_uid: a, two.series_uid: b},
                set(),
                True,
            ),
            Shape(
                "study-filtered-instances",
                {
                    "series-one": {
                        "data": {"last": {"data": wire[a[-1]]}, "first": {"data": wire[a[0]]}}
                    }
                },
                {one.series_uid: [a[0], a[-1]]},
                {a[0], a[-1]},
                True,
            ),
            Shape(
                "series-filtered",
                {"middle": {"data": wire[a[4]]}, "second": {"data": wire[a[1]]}},
                {one.series_uid: [a[1], a[4]]},
                {a[1], a[4]},
                True,
            ),
        ]
    }


def post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, content=content, headers={"Content-Type": "application/json"})
