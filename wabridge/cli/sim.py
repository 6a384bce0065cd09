"""`wabridge sim genesys|meta`: simulators of the two SaaS ends, for tests, staging and the demo.

  genesys   Genesys Cloud's OAuth login and Open Messaging inbound API: schema checks, tokens, rate limit,
            injected faults, and what it received per conversation (GET /sim/messages, /sim/conversations)
  meta      `serve`: the Graph API media endpoints; `send`: signed webhooks of every message type, or an
            open-loop load at a constant rate
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("sim", help="run the Genesys or Meta simulator", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_subparsers(dest="sim", metavar="SIMULATOR", parser_class=type(p))
    which.required = True

    from wabridge.sim import genesys, meta

    g = which.add_parser("genesys", help="serve a simulated Genesys Cloud (login + Open Messaging API)")
    genesys.add_arguments(g)
    g.set_defaults(func=genesys.run)
    m = which.add_parser("meta", help="serve Graph media endpoints, or send signed webhooks")
    meta.add_arguments(m)
    m.set_defaults(func=meta.run)
