"""The result cache: identical requests on unchanged data answered from disk, and
identical requests in flight at the same time sharing one model call."""

from model_proxy.cache.keys import data_fingerprint, entry_key, request_key
from model_proxy.cache.result_cache import ResultCache

__all__ = ["ResultCache", "data_fingerprint", "entry_key", "request_key"]
