"""A local stand-in for Invoiced's OAuth server and REST API.

Used by tests and by the local dev stack (`make run`); never deployed. It
follows ``invoiced-provider.md``: Invoiced's redirect and error shapes, strict
refresh-token rotation with no grace period, RS256 JWT access tokens, the
20-concurrent-request cap, and fault switches for what the network and the
provider can do to a client (see ``Faults``).

    with LocalInvoiced(client_id=..., client_secret=..., redirect_uris=[...]) as invoiced:
        location = invoiced.consent(authorize_url)   # act as the user
        invoiced.faults.set(commit_then_drop_next=1)  # lose the next token response
"""

from __future__ import annotations

from .consent import ConsentError
from .faults import Faults
from .models import Company
from .server import LocalInvoiced, TokenRequestRecord

__all__ = ["Company", "ConsentError", "Faults", "LocalInvoiced", "TokenRequestRecord"]
