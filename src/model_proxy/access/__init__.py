"""Client authentication and per-model allow-lists, configured in ``access.json``.

    policy = load_access(Path("access.json"), known_models=config.models)
    guard = AccessGuard.build(policy, JwksCaches(Timeouts()))   # one per config state
    caller = await guard.authenticate(request.headers)   # 401 Unauthorized
    guard.authorize(caller, model_id)                    # 403 "You have no access to this model"

Without access.json (``policy=None``) every caller is anonymous and allowed.
"""

from .guard import ANONYMOUS, NO_ACCESS, AccessGuard, Caller, CallerKind
from .keys import digest_of, new_api_key
from .loader import ACCESS_FILE, AccessPolicy, find_access_file, load_access

__all__ = [
    "ACCESS_FILE",
    "ANONYMOUS",
    "NO_ACCESS",
    "AccessGuard",
    "AccessPolicy",
    "Caller",
    "CallerKind",
    "digest_of",
    "find_access_file",
    "load_access",
    "new_api_key",
]
