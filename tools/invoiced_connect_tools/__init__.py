"""Operator tooling, installed with the project (``pip install -e .``) and never
shipped in the Lambda layer: the ``invoiced-connect`` command and the deploy
helpers ``make deploy`` runs."""
