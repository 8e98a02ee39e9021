"""Running ``model-proxy check-auth`` as an administrator would, and reading its report:

done = check_auth(config_dir, "--server", server_id)
assert step_lines(done.stdout)["token exchange"].startswith("OK")
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import child_env, model_proxy_argv


def check_auth(
    config_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """check-auth on ``config_dir``, its token files in ``config_dir/data``."""
    argv = [*model_proxy_argv(), "check-auth", "--config-dir", str(config_dir)]
    argv += ["--data-dir", str(config_dir / "data"), *args]
    return subprocess.run(
        argv, env=child_env(env), capture_output=True, text=True, timeout=120, cwd=config_dir
    )


def step_lines(output: str) -> dict[str, str]:
    """``{"token exchange": "OK ...", ...}`` of the last server block."""
    steps = {}
    for line in output.splitlines():
        if line.startswith("  "):
            name, _, rest = line.strip().partition("  ")
            steps[name.strip()] = rest.strip()
    return steps


def write_config(folder: Path, servers: Mapping[str, Any], models: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "servers.json").write_text(json.dumps(servers))
    (folder / "models.json").write_text(json.dumps(models))
    return folder
