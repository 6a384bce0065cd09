"""`wabridge transform [--outbound] [FILE|-]`: Meta webhook JSON in, Genesys Open Messaging JSON out, no servers
needed; with `--outbound` the other way: Genesys outbound webhook JSON (an agent's message) in, the Meta send bodies
out (codecs/outbound.py).

A FILE holds one webhook (pretty-printed is fine); standard input (`-` or no argument) holds one webhook per line.
Every Genesys message (every Meta send) is printed as one JSON line on stdout; receipts, typing, skipped items and
undecodable inputs go to stderr, one line each, with their reason. An agent's media is shown by its link (the bridge
sends it by the id Meta gives its upload). Exit 0 when every input was a JSON object, 2 otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import BinaryIO, TextIO

from wabridge.codecs.results import Inbound, Skipped, StatusUpdate
from wabridge.codecs.transform import WebhookDecodeError, encode_genesys, transform


def register(sub) -> None:
    p = sub.add_parser("transform", help="transform Meta webhooks to Genesys messages", description=__doc__)
    p.add_argument("file", nargs="?", default="-", help="a webhook JSON file, or - for one webhook per stdin line")
    p.add_argument(
        "--outbound", action="store_true", help="Genesys outbound webhooks (agents' messages) to Meta send bodies"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    stream = outbound_stream if getattr(args, "outbound", False) else transform_stream
    if args.file == "-":
        return stream(_lines(sys.stdin.buffer), sys.stdout.buffer, sys.stderr)
    try:
        with open(args.file, "rb") as handle:
            body = handle.read()
    except OSError as exc:
        print(f"wabridge transform: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    return stream(iter([body]), sys.stdout.buffer, sys.stderr)


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    for line in stream:
        if line.strip():
            yield line


def transform_stream(bodies: Iterator[bytes], out: BinaryIO, err: TextIO) -> int:
    """Transform each body; 2 if any of them was not a JSON object, else 0. `out` gets UTF-8 JSON lines."""
    status = 0
    for number, body in enumerate(bodies, 1):
        try:
            results = transform(body)
        except WebhookDecodeError as exc:
            print(f"input {number}: invalid: {exc}", file=err)
            status = 2
            continue
        for result in results:
            match result:
                case Inbound(message=message):
                    out.write(encode_genesys(message) + b"\n")
                case StatusUpdate(wamid=wamid, status=meta_status, receipt=receipt):
                    print(f"input {number}: status {wamid}: {meta_status} (receipt {receipt or 'none'})", file=err)
                case Skipped(reason=reason, detail=detail, wamid=wamid):
                    print(f"input {number}: skipped {wamid or '-'}: {reason}: {detail}", file=err)
    out.flush()
    return status


def outbound_stream(bodies: Iterator[bytes], out: BinaryIO, err: TextIO) -> int:
    """Each Genesys outbound webhook to the Meta send bodies it becomes; 2 if any was not a JSON object."""
    from wabridge.codecs.meta_bodies import meta_body
    from wabridge.codecs.outbound import decode_outbound
    from wabridge.codecs.outbound_results import OutboundDecodeError, OutboundSkipped, Send, Typing

    status = 0
    for number, body in enumerate(bodies, 1):
        try:
            result = decode_outbound(body)
        except OutboundDecodeError as exc:
            print(f"input {number}: invalid: {exc}", file=err)
            status = 2
            continue
        match result:
            case Send(id=genesys_id, parts=parts, media=media):
                for part in range(len(parts)):
                    out.write(meta_body(result, part, media_link=media.url if media else None) + b"\n")
                print(
                    f"input {number}: {genesys_id}: {result.kind} in {len(parts)} message(s) to {result.to_id}",
                    file=err,
                )
            case Typing(id=genesys_id, to_id=to_id):
                print(f"input {number}: {genesys_id}: typing to {to_id} (on their latest message)", file=err)
            case OutboundSkipped(id=genesys_id, reason=reason, detail=detail, genesys_reason=receipt):
                owed = f" (Failed receipt: {receipt})" if receipt else ""
                print(f"input {number}: skipped {genesys_id or '-'}: {reason}: {detail}{owed}", file=err)
    out.flush()
    return status
