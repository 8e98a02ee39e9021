"""The inference request as the route parsed and authorised it: frozen, trusted inside."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model_proxy.config import Level, ModelConfig, ServerConfig
from model_proxy.models.body import InstanceInput, SeriesInput, Token
from model_proxy.pacs.source import Target


@dataclass(frozen=True)
class InferenceRequest:
    """Who asked which model for what, on which server, and how the answer is wanted.

    ``plan`` is the model's request body (models/body.py); ``encoding`` the
    negotiated Content-Encoding (None: identity); ``if_none_match`` the viewer's
    validator, if any.
    """

    caller: str | None
    model: ModelConfig
    server: ServerConfig
    level: Level
    target: Target
    inputs: Sequence[SeriesInput] | Sequence[InstanceInput]
    plan: tuple[Token, ...]
    encoding: str | None
    if_none_match: str | None
