"""servers.json and models.json: typed, validated, immutable.

>>> config = load_config(Path("."))        # doctest: +SKIP
>>> config.default_server().uri            # doctest: +SKIP
'https://pacs.local/dicom-web'

Every problem of both files is reported at once in one :class:`ConfigError`.
"""

from .loader import ConfigError, ProxyConfig, load_config, parse_models, parse_servers
from .schema import AuthType, DataFilterEntry, Level, ModelConfig, ServerConfig, Task

__all__ = [
    "AuthType",
    "ConfigError",
    "DataFilterEntry",
    "Level",
    "ModelConfig",
    "ProxyConfig",
    "ServerConfig",
    "Task",
    "load_config",
    "parse_models",
    "parse_servers",
]
