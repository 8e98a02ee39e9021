"""access.json in a config reload (SIGHUP or ``--watch-config``, see runtime/reload.py).

The Reloader loads it with servers.json and models.json, off the event loop, and
puts all three in force as one new config state, or none of them. A file that
disappears does not turn authentication off: that takes a restart, so that a
deleted or unmounted file can never open the proxy to everyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from model_proxy.config import ConfigError

from .loader import AccessPolicy, find_access_file, load_access


def reload_access(
    config_dir: Path,
    explicit: Path | None,
    in_force: AccessPolicy | None,
    known_models: Mapping[str, object],
    known_servers: Mapping[str, object],
) -> AccessPolicy | None:
    """The policy of the access.json on disk now (blocking); ConfigError if it is
    broken, or gone while ``in_force`` has rules."""
    path = find_access_file(config_dir, explicit)
    if path is None:
        if in_force is not None:
            raise ConfigError(
                [
                    f"{in_force.source}: not found any more; client authentication"
                    " stays on with the rules loaded before (restart the proxy to turn"
                    " it off)"
                ]
            )
        return None
    return load_access(path, known_models=known_models, known_servers=known_servers)
