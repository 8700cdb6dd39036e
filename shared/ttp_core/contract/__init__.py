"""The public contract: NATS subjects, stream names and CloudEvents payload models."""
