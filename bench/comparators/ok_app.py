"""The ceiling for a Python HTTP app here: Granian RSGI answering 200 "ok" to anything, reading the body first.

`python -m bench.comparators.ok_app PORT [WORKERS]` — also how the load generator's own rate is measured.
"""

from __future__ import annotations

import sys


class OkApp:
    async def __call__(self, scope, proto) -> None:
        await proto()  # read the body, as any real ingress must
        proto.response_bytes(200, [("content-type", "text/plain")], b"ok")


app = OkApp()


def main(argv: list[str]) -> int:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    port = int(argv[0])
    workers = int(argv[1]) if len(argv) > 1 else 1
    Granian("bench.comparators.ok_app:app", address="127.0.0.1", port=port, interface=Interfaces.RSGI,
            loop=Loops.uvloop, http=HTTPModes.http1, workers=workers, websockets=False).serve()  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
