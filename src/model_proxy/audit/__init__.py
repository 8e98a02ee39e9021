"""The audit trail: one JSON line per inference request (see docs/security.md).

writer = AuditWriter(Path("log/audit.jsonl")); writer.start()
app = AuditMiddleware(app, writer=writer, prefixes=["/segmentations/"])
audit_record(request).model = model.id      # in the route
"""

from model_proxy.upstream.request_id import REQUEST_ID_HEADER

from .record import AuditMiddleware, AuditRecord, audit_record
from .writer import AuditWriter

__all__ = ["REQUEST_ID_HEADER", "AuditMiddleware", "AuditRecord", "AuditWriter", "audit_record"]
