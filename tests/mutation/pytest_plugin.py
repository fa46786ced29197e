"""Loaded into every pytest run of ``make mutate`` (``[tool.mutmut]
pytest_add_cli_args``), never into ``make test``.

Property tests draw the same examples for every mutant (so a mutant is
killed, or not, the same way each run) and keep no example database (which
would carry one mutant's failures into the next mutant's run).
"""

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
settings.load_profile("mutation")
