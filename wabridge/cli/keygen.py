"""`wabridge keygen`: print a new WABRIDGE_SECRET_KEY (32 random bytes, base64)."""

from __future__ import annotations

from wabridge.engine.secrets import generate_key


def register(sub) -> None:
    p = sub.add_parser("keygen", help="print a new WABRIDGE_SECRET_KEY", description=__doc__)
    p.set_defaults(func=run)


def run(args) -> int:
    print(generate_key())
    return 0
