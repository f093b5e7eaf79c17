"""Adapters to the outside world: settings, Postgres, Redis, embedded servers, JWT."""
