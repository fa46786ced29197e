"""Run the local Invoiced until Ctrl-C:

    python -m local.invoiced --client-id ID --client-secret SECRET \\
        --redirect-uri http://127.0.0.1:3000/callback [--client-name NAME] \\
        [--company ID=NAME ...] [--app-port N] [--api-port N]

Prints ``LOCAL_INVOICED_BASE_URL=...`` and ``LOCAL_INVOICED_API_URL=...`` on
stdout (one per line, easy for a script to read); logs requests to stderr.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from . import Company, LocalInvoiced
from .oauth import DEFAULT_CLIENT_NAME


def _company(text: str) -> Company:
    ident, sep, name = text.partition("=")
    if not sep or not ident.isdigit() or not name:
        raise argparse.ArgumentTypeError(f"expected ID=NAME, got {text!r}")
    return Company(id=int(ident), name=name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.invoiced", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--redirect-uri", action="append", required=True, dest="redirect_uris",
                        help="a registered redirect URI (repeatable)")
    parser.add_argument("--client-name", default=DEFAULT_CLIENT_NAME,
                        help=f"the application name the consent page shows (default: {DEFAULT_CLIENT_NAME!r})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--app-port", type=int, default=0, help="authorize/token/revoke host (0: any free port)")
    parser.add_argument("--api-port", type=int, default=0, help="REST API host (0: any free port)")
    parser.add_argument("--company", type=_company, action="append", dest="companies",
                        help="ID=NAME of a company on the consent page (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    stop = threading.Event()
    # Explicit handlers: a shell's background job inherits an ignored SIGINT, and a dev
    # stack that spawned us stops us with SIGTERM; both should shut down cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    invoiced = LocalInvoiced(client_id=args.client_id, client_secret=args.client_secret,
                             redirect_uris=args.redirect_uris, client_name=args.client_name,
                             companies=args.companies,
                             host=args.host, app_port=args.app_port, api_port=args.api_port)
    with invoiced:
        print(f"LOCAL_INVOICED_BASE_URL={invoiced.base_url}", flush=True)
        print(f"LOCAL_INVOICED_API_URL={invoiced.api_url}", flush=True)
        print("Local Invoiced is running; Ctrl-C to stop.", file=sys.stderr, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
