"""The Store port's adapters: PostgreSQL (postgres.py) and SQLite (sqlite.py)."""
