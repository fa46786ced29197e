"""What a consumer's Lambda uses: the token reader and the REST API session.
The classes take their collaborators; ``invoiced_connect`` (the package top)
gives them this process's, built by :mod:`invoiced_connect.runtime`."""
