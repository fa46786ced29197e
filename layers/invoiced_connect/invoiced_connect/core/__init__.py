"""Plain values and configuration, imported by everything else and importing
nothing of the package: models, settings, Invoiced's environments, token
lifetimes, metric names, the return-URL allowlist, base64url."""
