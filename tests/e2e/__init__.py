"""End-to-end tests: real service processes against real NATS and PostgreSQL."""
