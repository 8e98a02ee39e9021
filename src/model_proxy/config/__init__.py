"""servers.json and models.json: typed, validated, immutable.

Typical use::

    config = load_config(Path("."))
    config.default_server().uri            # 'https://pacs.local/dicom-web'

Every problem of both files is reported at once in one :class:`ConfigError`.
"""

from .loader import ConfigError, ProxyConfig, load_config, parse_models, parse_servers
from .rules import PrefetchRule, RuleLevel
from .schema import (
    AuthType,
    CacheValidation,
    DataFilterEntry,
    InputFormat,
    Level,
    ModelConfig,
    ServerConfig,
    Task,
)

__all__ = [
    "AuthType",
    "CacheValidation",
    "ConfigError",
    "DataFilterEntry",
    "InputFormat",
    "Level",
    "ModelConfig",
    "PrefetchRule",
    "ProxyConfig",
    "RuleLevel",
    "ServerConfig",
    "Task",
    "load_config",
    "parse_models",
    "parse_servers",
]
