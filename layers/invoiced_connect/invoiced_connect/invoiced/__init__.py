"""The Invoiced adapter: its OAuth 2.0 token and revoke endpoints and the one
API call the flow needs, with typed errors."""
