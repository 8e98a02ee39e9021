"""Shared inputs for the config tests: the contract's and the setup guide's examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_proxy.config import ConfigError, load_config, parse_models, parse_servers

S1 = "b1407f18-575d-487c-bc0c-640c6da651bc"
S2 = "63140137-a63d-4ad1-b489-3479bc43387c"
M1 = "d4e548ad-f365-4c34-918b-4e61a8b896f0"
M2 = "7472e576-d49c-4fbf-9b2a-a52e1f59a906"
PASSWORD = "35&Q39Nj&i@Eyk6P"
TOKEN = "YOUR_AUTH_TOKEN_s3cr3t"

# Contract section 2, verbatim.
CONTRACT_MODELS: dict[str, Any] = {
    M1: {
        "uri": "http://localhost:8011/segmentation",
        "supports": ["/studies/series"],
        "task": "segmentation",
        "statusUri": "http://localhost:8011",
    },
    M2: {
        "uri": "http://localhost:8011/multiple-series-endpoint/predict",
        "task": "segmentation",
        "supports": ["/studies"],
        "dataFilter": [
            {"dataKey": "series-one", "title": "Series one"},
            {"dataKey": "series-two", "title": "Series two"},
        ],
    },
}

# setting-up-model-proxy.txt, the three "Authentication" examples.
BASIC = {
    "uri": "https://localhost/zhiva/pacs",
    "statusUri": "https://localhost/zhiva/pacs/studies",
    "authType": "basicAuth",
    "login": "zhiva",
    "password": PASSWORD,
}
ZHIVA = {
    "uri": "https://localhost/zhiva/pacs",
    "statusUri": "https://localhost/zhiva/pacs/studies",
    "authType": "zhivaAuth",
    "login": "your_username",
    "password": PASSWORD,
    "signInServer": "https://localhost/auth/sign-user",
    "signInTokenServer": "https://localhost/auth/generate-access-token",
    "refreshServer": "https://localhost/auth/refresh-token",
}
TOKEN_AUTH = {
    "uri": "https://localhost/zhiva/pacs",
    "statusUri": "https://localhost/zhiva/pacs/studies",
    "authType": "token",
    "authToken": TOKEN,
    "signInTokenServer": "https://localhost/auth/generate-access-token",
    "refreshServer": "https://localhost/auth/refresh-token",
}


def server_errors(entry: object, key: str = S1, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_servers({key: entry}, **kwargs)
    return info.value.messages


def model_errors(entry: object, key: str = M1, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_models({key: entry}, **kwargs)
    return info.value.messages


def load_errors(folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(folder)
    return info.value.messages


def model(**fields: Any) -> dict[str, Any]:
    return {"uri": "http://localhost:8011/predict", "task": "prediction", **fields}


def only(messages: list[str]) -> str:
    assert len(messages) == 1, messages
    return messages[0]


def write_config(folder: Path, servers: object, models: object) -> Path:
    (folder / "servers.json").write_text(json.dumps(servers))
    (folder / "models.json").write_text(json.dumps(models))
    return folder
