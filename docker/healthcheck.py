"""Docker HEALTHCHECK: GET /livez on the port and scheme the proxy serves (docs/operations.md)."""

import os
import ssl
import sys
import urllib.request

plain = os.environ.get("MODEL_PROXY_NO_TLS", "").strip().lower() in {"1", "true", "yes", "on"}
port = os.environ.get("MODEL_PROXY_PORT", "8002")
url = f"{'http' if plain else 'https'}://127.0.0.1:{port}/livez"
# The certificate is usually self-signed for the hospital's host name, not 127.0.0.1.
context = None if plain else ssl._create_unverified_context()  # noqa: S323
try:
    with urllib.request.urlopen(url, context=context, timeout=4) as response:  # noqa: S310
        sys.exit(0 if response.status == 200 else 1)
except OSError as exc:
    print(f"health check failed: {exc}", file=sys.stderr)
    sys.exit(1)
