"""The local Resonate server for development and tests (never production)."""
