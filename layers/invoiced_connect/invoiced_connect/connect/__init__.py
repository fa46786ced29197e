"""The hosted connect flow: signed links, ``GET /connect`` (state, PKCE, the
redirect to Invoiced), ``GET /callback`` (the code exchange) and the pages."""
