"""UIDs of the objects the proxy creates, under a configurable root (``--uid-root``).

The default root ``2.25.`` needs no registration: a UID under it is the decimal
value of a random UUID (ISO/IEC 9834-8, DICOM PS3.5 B.2). An organisation with
its own root sets ``--uid-root 1.2.826.0.1.3680043.10.1234.``; the rest of the
UID is then random digits from pydicom (at most 64 characters in all).
"""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

UUID_ROOT = "2.25."
# Leaves room for at least 20 random digits within the 64 characters of a UID.
_MAX_ROOT_LENGTH = 40
_ROOT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.")


def check_uid_root(root: str) -> str:
    """``root`` if it can prefix UIDs, else ValueError saying what is expected."""
    if not _ROOT.fullmatch(root) or len(root) > _MAX_ROOT_LENGTH:
        raise ValueError(
            "expected dot-separated numbers without leading zeros, ending with a dot,"
            f" at most {_MAX_ROOT_LENGTH} characters (like 2.25. or 1.2.826.0.1.3680043.10.1234.);"
            f" got {root[:60]!r}"
        )
    return root


def new_uid(root: str) -> str:
    """A new UID under ``root``.

    >>> new_uid("2.25.").startswith("2.25.")
    True
    >>> len(new_uid("1.2.3.")) <= 64
    True
    """
    # pydicom's prefix=None is exactly the UUID-derived 2.25 form.
    return str(generate_uid(prefix=None if root == UUID_ROOT else root))
