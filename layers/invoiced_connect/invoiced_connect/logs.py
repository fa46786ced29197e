"""Route the package's log records through a handler's Powertools logger."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger


def use_handler_logger(logger: Logger) -> None:
    """Make ``invoiced_connect.*`` records come out as the handler's JSON lines
    (with its correlation id and Lambda context)."""
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    logging.getLogger("invoiced_connect")
    copy_config_to_registered_loggers(source_logger=logger, include={"invoiced_connect"})
