"""Authentication to a PACS: one ``httpx.Auth`` per ``authType`` (``flows``), token
sessions and their renewal, the token store, and ``model-proxy check-auth``."""
