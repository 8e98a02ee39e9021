"""access.json joins the config reload (SIGHUP or ``--watch-config``, see runtime/reload.py).

A changed file is loaded and checked with the other config files; if anything is
wrong the reload is refused and the rules in force stay. A file that disappears
does not turn authentication off: that takes a restart, so that a deleted or
unmounted file can never open the proxy to everyone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from model_proxy.config import ConfigError

from .guard import AccessGuard
from .loader import find_access_file, load_access

logger = logging.getLogger(__name__)


def access_reload_hook(
    guard: AccessGuard, config_dir: Path, explicit: Path | None
) -> Callable[[], Callable[[], None]]:
    """A ``Reloader`` hook: load and check access.json, return what puts it in force."""

    def load() -> Callable[[], None]:
        path = find_access_file(config_dir, explicit)
        if path is None:
            if guard.policy is not None:
                raise ConfigError(
                    [
                        f"{guard.policy.source}: not found any more; client authentication"
                        " stays on with the rules loaded before (restart the proxy to turn"
                        " it off)"
                    ]
                )
            return lambda: None
        policy = load_access(path)

        def commit() -> None:
            turned_on = guard.policy is None
            guard.replace(policy)
            logger.info(
                "client access rules %s from %s: %d API keys%s, %d model rules",
                "turned on" if turned_on else "reloaded",
                path,
                len(policy.api_keys),
                " and bearer JWTs" if policy.jwt else "",
                len(policy.models),
            )

        return commit

    return load
