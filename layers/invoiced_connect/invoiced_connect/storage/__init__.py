"""Storage adapters: the DynamoDB token table (the only module that talks to
it) and the KMS token encryption bound to each connection and token."""
