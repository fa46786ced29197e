"""AWS adapters: boto3 clients with this project's timeouts, Secrets Manager
values with a TTL cache, and lifecycle events on EventBridge."""
