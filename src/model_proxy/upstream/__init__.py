"""Talking to upstreams (PACS, models, token servers): httpx clients on our own
network layer, retries, circuit breakers and health probes."""
