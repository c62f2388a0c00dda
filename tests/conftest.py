"""Shared fixtures. Tests run against real PostgreSQL and Redis (see config.devstack)."""
