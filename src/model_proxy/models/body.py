"""The plan of the request body a model receives (docs/compatibility.md §5.2, §5.3).

The body is planned first as a flat list of tokens: literal JSON text, and
retrievals whose instances are written as an array or as a single string. The
plan for a series with data filters ``[{"dataKey": "a", "uuid": "1.2"}]`` is::

    b'{"a":{"data":'  Retrieval(instance 1.2, single, instance key "a")  b'}}'

``models/pipeline.py`` streams a plan: it retrieves, encodes and sends the
instances with the three stages overlapping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from model_proxy.config import Level
from model_proxy.pacs.source import Target


@dataclass(frozen=True)
class InstanceInput:
    """An instance chosen for a named input of the model (a nested data filter)."""

    data_key: str
    sop_uid: str


@dataclass(frozen=True)
class SeriesInput:
    """A series chosen for a named input; with ``instances``, only those of it."""

    data_key: str
    series_uid: str
    instances: tuple[InstanceInput, ...] = ()


@dataclass(frozen=True)
class Retrieval:
    """Instances to fetch; written as an array of strings, or as one string.

    ``series_key`` and ``instance_key`` are the dataKeys of the inputs they
    fill, if any; the dicom-multipart format sends them as part headers.
    """

    target: Target
    as_array: bool
    series_key: str | None = None
    instance_key: str | None = None
    # A whole study: leave out the SEG / SR / RT structure sets it holds
    # (pacs/result_instances.py) unless the model asks for them.
    leave_out_results: bool = False


Token = bytes | Retrieval


def plan_body(
    level: Level,
    target: Target,
    inputs: Sequence[SeriesInput | InstanceInput] = (),
    *,
    send_result_objects: bool = False,
) -> list[Token]:
    """Tokens for the body of one inference request.

    Without inputs the body is the level's plain shape: one instance string, or
    an array of them. ``inputs`` are SeriesInput at study level and
    InstanceInput at series level. A whole study's retrieval leaves out the
    result objects it holds unless ``send_result_objects``; a series or an
    instance named by the request is sent as it is.
    """
    tokens: list[Token] = []
    if not inputs:
        whole_study = target.series is None and not send_result_objects
        tokens.append(
            Retrieval(target, as_array=level is not Level.INSTANCE, leave_out_results=whole_study)
        )
        return tokens
    tokens.append(b"{")
    for index, item in enumerate(inputs):
        if index:
            tokens.append(b",")
        tokens.append(orjson.dumps(item.data_key) + b':{"data":')
        if isinstance(item, InstanceInput):
            tokens.append(
                Retrieval(
                    Target(target.study, target.series, item.sop_uid),
                    False,
                    instance_key=item.data_key,
                )
            )
        elif item.instances:
            tokens.append(b"{")
            for inner_index, instance in enumerate(item.instances):
                if inner_index:
                    tokens.append(b",")
                tokens.append(orjson.dumps(instance.data_key) + b':{"data":')
                tokens.append(
                    Retrieval(
                        Target(target.study, item.series_uid, instance.sop_uid),
                        False,
                        series_key=item.data_key,
                        instance_key=instance.data_key,
                    )
                )
                tokens.append(b"}")
            tokens.append(b"}")
        else:
            tokens.append(
                Retrieval(Target(target.study, item.series_uid), True, series_key=item.data_key)
            )
        tokens.append(b"}")
    tokens.append(b"}")
    return tokens
