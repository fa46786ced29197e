"""The token lifecycle: refreshing under a lease with versioned commits and
kept-aside recovery, the scheduler's due-index, the SQS worker, disconnecting."""
