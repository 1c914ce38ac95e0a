"""The error a failed verification raises (a leaf module: the writers and `verify` both raise it)."""
from __future__ import annotations

from ..errors import UserError


class VerificationError(UserError):
    """The converted model does not match its source (the output is not published)."""
