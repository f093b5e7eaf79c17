"""The write side: commands, their handlers, idempotency, group commit, and the ports it needs."""
