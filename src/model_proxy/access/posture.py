"""Start-up security checks: CORS origins, who can read secret files, what is protected.

Nothing here refuses to start: each finding is a warning the CLI prints
(``check-config``) or logs (``serve``), so a drop-in deployment keeps working.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from model_proxy.config.checks import SECRET_FIELDS

logger = logging.getLogger(__name__)


def parse_cors_origins(value: str) -> tuple[str, ...]:
    """``--cors-origins``: ``*`` or comma-separated ``scheme://host[:port]`` origins.

    >>> parse_cors_origins("https://viewer.local, http://localhost:3000/")
    ('https://viewer.local', 'http://localhost:3000')
    >>> parse_cors_origins("*")
    ('*',)
    """
    origins: list[str] = []
    for raw in value.split(","):
        origin = raw.strip()
        if not origin:
            continue
        if origin == "*":
            origins.append(origin)
            continue
        origin = origin.rstrip("/")  # browsers send no trailing slash
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ValueError(
                f"CORS origin {origin[:100]!r} must look like https://viewer.hospital.local"
                " or http://localhost:3000 (scheme, host and optional port, no path)"
            )
        origins.append(origin)
    if not origins:
        raise ValueError('no CORS origin given; use "*" to allow every origin')
    if "*" in origins and len(origins) > 1:
        raise ValueError('"*" allows every origin; give it alone or list the origins')
    return tuple(dict.fromkeys(origins))


def files_with_secrets(
    config_dir: Path,
    *,
    access_file: Path | None = None,
    tls_key: Path | None = None,
) -> list[tuple[Path, str]]:
    """The configuration files that hold secrets, each with what it holds.

    servers.json counts when a secret field holds the secret itself; a secret
    given as ``{"file": ...}`` puts that file on the list instead, and one given
    as ``{"env": ...}`` lives in no file.
    """
    found: list[tuple[Path, str]] = []
    servers_path = config_dir / "servers.json"
    inline, referenced = _secrets_in_servers(servers_path)
    if inline:
        found.append((servers_path, "PACS passwords or tokens"))
    for path in referenced:
        found.append((path if path.is_absolute() else config_dir / path, "a PACS secret"))
    if access_file is not None:
        found.append((access_file, "client access rules and API key digests"))
    if tls_key is not None:
        found.append((tls_key, "the TLS private key"))
    return found


def _secrets_in_servers(path: Path) -> tuple[bool, list[Path]]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return False, []  # the loader reports unreadable files
    inline = False
    referenced: list[Path] = []
    for entry in entries.values() if isinstance(entries, dict) else ():
        if not isinstance(entry, dict):
            continue
        for name in SECRET_FIELDS:
            value = entry.get(name)
            if isinstance(value, str) and value:
                inline = True
            elif isinstance(value, dict) and isinstance(value.get("file"), str):
                referenced.append(Path(value["file"]).expanduser())
    return inline, list(dict.fromkeys(referenced))


def exposure_warnings(files: Iterable[tuple[Path, str]]) -> list[str]:
    """A warning for each file that users other than its owner may read or change.

    Read access for the proxy's own group is not a warning: it is how the systemd
    recipe (root:model-proxy 0640) and Kubernetes secret mounts (fsGroup, 0440) give
    the service its secrets without making it their owner (docs/deployment.md)."""
    if os.name != "posix":
        return []  # Windows has ACLs, not mode bits
    own_groups = {os.getgid(), *os.getgroups()}
    warnings = []
    for path, holds in files:
        try:
            info = path.stat()
        except OSError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        exposed = stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP
        if info.st_gid not in own_groups:
            exposed |= stat.S_IRGRP
        if mode & exposed:
            warnings.append(
                f"{path} holds {holds} and is readable or writable by group or others"
                f" (mode {mode:04o}); restrict it with: chmod 600 {path}"
            )
    return warnings


def log_posture(
    *, cors_origins: tuple[str, ...], auth_source: Path | None, audit_path: Path | None
) -> None:
    """One line per protection at start-up, a warning for each one that is off."""
    if auth_source is None:
        logger.warning(
            "client authentication is off: any caller may run every model"
            " (configure it in access.json, see docs/security.md)"
        )
    else:
        logger.info("client authentication on (%s)", auth_source)
    if "*" in cors_origins:
        logger.warning(
            "CORS allows every origin (*), as the original did; list your viewers'"
            " origins with --cors-origins or MODEL_PROXY_CORS_ORIGINS"
        )
    else:
        logger.info("CORS origins: %s", ", ".join(cors_origins))
    if audit_path is None:
        logger.warning("audit log is off (--audit-log off)")
    else:
        logger.info("audit log: %s", audit_path)
