"""`wabridge sim genesys|meta`: simulators of the two SaaS ends, for tests, staging and the demo.

genesys   Genesys Cloud's OAuth login and Open Messaging inbound API: schema checks, tokens, rate limit,
          injected faults, and what it received per conversation (GET /sim/messages, /sim/conversations);
          the agent's side: signed outbound webhooks to the bridge with Genesys's retries (POST /sim/agent/send,
          or `genesys agent send`), the receipt and typing endpoints, both directions per conversation
meta      `serve`: the Graph API media endpoints, and the sending side (/messages, /media, the 24-hour window,
          throttling, signed status webhooks to --bridge-url); `send`: signed webhooks of every message type,
          or an open-loop load at a constant rate
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "sim",
        help="run the Genesys or Meta simulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_subparsers(dest="sim", metavar="SIMULATOR", parser_class=type(p))
    which.required = True

    from wabridge.sim import genesys, meta

    g = which.add_parser("genesys", help="serve a simulated Genesys Cloud (login, Open Messaging API, the agent)")
    genesys.add_arguments(g)
    g.set_defaults(func=genesys.run)
    m = which.add_parser("meta", help="serve the Graph endpoints (media, sends), or send signed webhooks")
    meta.add_arguments(m)
    m.set_defaults(func=meta.run)
