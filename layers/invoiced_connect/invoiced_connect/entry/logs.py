"""Route the package's log records through a handler's Powertools logger, and
keep libraries that log request data quiet."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger

#: Libraries whose DEBUG and INFO records can carry what must never be
#: logged: botocore logs every AWS request and response body (the plaintext
#: sent to KMS Encrypt holds both tokens; the flow state written to DynamoDB
#: holds the PKCE verifier), urllib3 logs request lines with their query
#: strings, the X-Ray SDK its segments.
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "requests", "aws_xray_sdk")
QUIET_LEVEL = logging.WARNING


def quiet_library_loggers() -> None:
    """Hold :data:`QUIET_LOGGERS` (and any of their children given a lower
    level) at WARNING or above, whatever ``LOG_LEVEL``, Lambda's log level or
    the root logger say."""
    for name in QUIET_LOGGERS:
        library = logging.getLogger(name)
        if library.level < QUIET_LEVEL:
            library.setLevel(QUIET_LEVEL)
    for name, child in list(logging.root.manager.loggerDict.items()):
        if (isinstance(child, logging.Logger) and name.partition(".")[0] in QUIET_LOGGERS
                and logging.NOTSET < child.level < QUIET_LEVEL):
            child.setLevel(QUIET_LEVEL)


def use_handler_logger(logger: Logger) -> None:
    """Make ``invoiced_connect.*`` records come out as the handler's JSON lines
    (with its correlation id and Lambda context), and quiet the libraries that
    would log request data."""
    from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

    logging.getLogger("invoiced_connect")
    copy_config_to_registered_loggers(source_logger=logger, include={"invoiced_connect"})
    quiet_library_loggers()
