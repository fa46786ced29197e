"""The glue each Lambda handler (``functions/*/app.py``) calls: it parses the
event, takes this execution environment's parts from
:mod:`invoiced_connect.runtime`, calls the logic and counts what happened.
Handlers import nothing else of the package."""
