"""`wabridge migrate`: create or upgrade the database schema of the configured store (idempotent).

PostgreSQL when WABRIDGE_DATABASE_URL is set, else the embedded SQLite file under the data directory.
Prints one line; exit 0 on success, 1 when the database cannot be reached, 2 on bad configuration.

Key rotation: set WABRIDGE_SECRET_KEY to `new,old`, run `wabridge migrate --reencrypt-secrets` (every tenant's
secrets sealed with the old key are sealed again with the new one), then drop the old key.
"""

from __future__ import annotations

import asyncio
import sys

from wabridge.engine.settings import Settings, load_settings
from wabridge.ports import BackendUnavailable


def register(sub) -> None:
    p = sub.add_parser("migrate", help="create or upgrade the database schema", description=__doc__)
    p.add_argument("--config", help="TOML settings file (default: $WABRIDGE_CONFIG)")
    p.add_argument(
        "--reencrypt-secrets",
        action="store_true",
        help="after migrating, re-seal tenant secrets with the first WABRIDGE_SECRET_KEY (key rotation)",
    )
    p.set_defaults(func=run)


def configured_store(settings: Settings):
    """The Store the settings select: PostgreSQL with a database URL, SQLite otherwise."""
    if settings.database_url is not None:
        from wabridge.adapters.store.postgres import PostgresStore

        return PostgresStore(settings)
    from wabridge.adapters.store.sqlite import SqliteStore

    return SqliteStore(settings)


async def migrate(settings: Settings, *, reencrypt: bool = False) -> str:
    store = configured_store(settings)
    await store.open()
    try:
        version = await store.migrate()
        rotated = await store.reencrypt_secrets() if reencrypt else None
    finally:
        await store.close()
    line = f"schema at version {version} ({store!r})"
    return line if rotated is None else f"{line}; {rotated} tenant(s) re-encrypted with the primary key"


def run(args) -> int:
    settings = load_settings(config_file=args.config)
    try:
        print(asyncio.run(migrate(settings, reencrypt=args.reencrypt_secrets)))
    except BackendUnavailable as exc:
        print(f"wabridge migrate: {exc}", file=sys.stderr)
        return 1
    return 0
