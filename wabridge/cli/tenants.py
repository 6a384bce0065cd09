"""`wabridge tenants add|list|remove`: the tenants a deployment serves, kept in the store with secrets encrypted.

A secret flag given as `-` is read from a prompt without echo, so it never lands in shell history; when stdin is
not a terminal (a pipe, a secrets manager), one line of stdin per `-` flag, in the order the flags are listed in
`--help`, with no prompt and no warning.

`add` on an existing id replaces the tenant whole: what is not given takes its default, so an update without
`--genesys-webhook-secret` leaves the tenant with none (the command says so on stderr). Its queue shard is the
exception: a tenant keeps its shard unless `--shard` moves it (cli/placement.py). `place` sets only the shard: a
tenant added before placement existed is placed with it, without giving its secrets again.
"""

from __future__ import annotations

import argparse
import getpass
import sys

import anyio
import msgspec

from wabridge.cli.placement import least_loaded_shard
from wabridge.engine.secrets import Secret
from wabridge.engine.settings import load_settings
from wabridge.ports import GenesysCredential, PhoneNumberTaken, TenantConfig

# Genesys Cloud regions (reference.md §2): API at https://api.<region>, login at https://login.<region>.
REGIONS = (
    "mypurecloud.com",
    "mypurecloud.ie",
    "mypurecloud.de",
    "mypurecloud.jp",
    "mypurecloud.com.au",
    "usw2.pure.cloud",
    "cac1.pure.cloud",
    "apne2.pure.cloud",
    "euw2.pure.cloud",
    "aps1.pure.cloud",
    "sae1.pure.cloud",
    "mec1.pure.cloud",
    "apne3.pure.cloud",
    "euc2.pure.cloud",
    "mxc1.pure.cloud",
    "apse1.pure.cloud",
)


def region_urls(region: str) -> tuple[str, str]:
    """(api url, login url) for a Genesys region."""
    return f"https://api.{region}", f"https://login.{region}"


def register(sub) -> None:
    p = sub.add_parser("tenants", help="add, list or remove tenants", description=__doc__)
    tsub = p.add_subparsers(dest="tenants_command", metavar="ACTION", parser_class=type(p))
    tsub.required = True

    add = tsub.add_parser("add", help="add a tenant, or update it if the id exists")
    add.add_argument("tenant_id")
    add.add_argument(
        "--phone-number-id",
        action="append",
        required=True,
        dest="phone_number_ids",
        help="Meta phone_number_id routed to this tenant (repeatable)",
    )
    add.add_argument("--app-secret", required=True, help="Meta app secret ('-' to prompt)")
    add.add_argument("--verify-token", required=True, help="webhook verify token ('-' to prompt)")
    add.add_argument("--whatsapp-token", required=True, help="WhatsApp Cloud API access token ('-' to prompt)")
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--genesys-region", choices=REGIONS, metavar="REGION", help="Genesys Cloud region, e.g. mypurecloud.ie"
    )
    where.add_argument("--genesys-api-url", help="Genesys API base URL (with --genesys-login-url)")
    add.add_argument("--genesys-login-url", help="Genesys login base URL (with --genesys-api-url)")
    add.add_argument(
        "--genesys-client-id",
        action="append",
        required=True,
        dest="client_ids",
        help="OAuth client id (repeatable, paired with --genesys-client-secret)",
    )
    add.add_argument(
        "--genesys-client-secret",
        action="append",
        required=True,
        dest="client_secrets",
        help="OAuth client secret ('-' to prompt; repeatable)",
    )
    add.add_argument("--genesys-integration-id", required=True, help="Open Messaging integration id")
    add.add_argument(
        "--genesys-webhook-secret",
        help="the integration's outbound webhook secret token, the key of the signature on the "
        "agents' messages Genesys sends the bridge ('-' to prompt)",
    )
    add.add_argument(
        "--genesys-rate-limit",
        type=int,
        default=300,
        metavar="PER_MIN",
        help="delivery budget per credential per minute (default 300, Genesys's default; 0: no "
        "budget, for an org whose limit was raised: its 429s are then honoured as they come)",
    )
    add.add_argument(
        "--send-rate",
        type=int,
        default=80,
        metavar="PER_SEC",
        help="messages sent to Meta per second per phone number, across every bridge process "
        "(default 80, Meta's default throughput; 0: no budget, Meta's 429s are honoured as they "
        "come)",
    )
    add.add_argument(
        "--read-marks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="mark the customer's latest message read when an agent answers (default: on)",
    )
    add.add_argument(
        "--shard",
        type=int,
        metavar="N",
        help="the queue shard the tenant's messages go to (0..WABRIDGE_SHARDS-1; default: a new tenant goes to "
        "the shard with the fewest tenants, an existing one keeps its own)",
    )
    add.set_defaults(func=run_add)

    ls = tsub.add_parser("list", help="list tenants (no secrets shown)")
    ls.set_defaults(func=run_list)

    place = tsub.add_parser(
        "place", help="put a tenant on a queue shard: the least loaded, or --shard N (e.g. one added before placement)"
    )
    place.add_argument("tenant_id")
    place.add_argument("--shard", type=int, metavar="N", help="the shard (default: the one with the fewest tenants)")
    place.set_defaults(func=run_place)

    rm = tsub.add_parser("remove", help="remove a tenant")
    rm.add_argument("tenant_id")
    rm.set_defaults(func=run_remove)


class _UsageError(Exception):
    pass


def _secret(value: str, prompt: str) -> Secret:
    if value == "-":
        if sys.stdin.isatty():
            value = getpass.getpass(f"{prompt}: ")
        else:
            # getpass would open /dev/tty, fail without one and warn "input may be echoed" before reading stdin
            # anyway: nothing is echoed from a pipe, so read it plainly.
            value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise SystemExit(f"wabridge: {prompt} must not be empty")
    return Secret(value)


def tenant_from_args(args: argparse.Namespace) -> TenantConfig:
    if args.genesys_region:
        api_url, login_url = region_urls(args.genesys_region)
    else:
        if not args.genesys_login_url:
            raise _UsageError("--genesys-api-url needs --genesys-login-url")
        api_url, login_url = args.genesys_api_url.rstrip("/"), args.genesys_login_url.rstrip("/")
    if len(args.client_ids) != len(args.client_secrets):
        raise _UsageError("--genesys-client-id and --genesys-client-secret must be given in pairs")
    if args.genesys_rate_limit < 0:
        raise _UsageError("--genesys-rate-limit must be 0 (no budget) or more")
    if args.send_rate < 0:
        raise _UsageError("--send-rate must be 0 (no budget) or more")
    # Read in `--help` order: piped secrets are one line each, in this order.
    app_secret = _secret(args.app_secret, "Meta app secret")
    verify_token = _secret(args.verify_token, "verify token")
    whatsapp_token = _secret(args.whatsapp_token, "WhatsApp token")
    credentials = tuple(
        GenesysCredential(client_id=cid, client_secret=_secret(sec, f"Genesys client secret for {cid}"))
        for cid, sec in zip(args.client_ids, args.client_secrets, strict=True)
    )
    webhook_secret = (
        None if args.genesys_webhook_secret is None else _secret(args.genesys_webhook_secret, "Genesys webhook secret")
    )
    return TenantConfig(
        tenant_id=args.tenant_id,
        phone_number_ids=tuple(dict.fromkeys(args.phone_number_ids)),
        app_secret=app_secret,
        verify_token=verify_token,
        whatsapp_token=whatsapp_token,
        genesys_api_url=api_url,
        genesys_login_url=login_url,
        genesys_integration_id=args.genesys_integration_id,
        credentials=credentials,
        rate_limit_per_minute=args.genesys_rate_limit,
        genesys_webhook_secret=webhook_secret,
        send_rate_per_second=args.send_rate,
        read_marks=args.read_marks,
    )


async def _with_store(work):
    """Run `work(store, directory)` with only the store and cache open: tenants can be managed while the broker
    is down. The directory forgets a changed tenant in Redis too, so running bridges see the change quickly."""
    from wabridge.actors.directory import TenantDirectory
    from wabridge.adapters.backends import open_backends

    settings = load_settings()
    async with open_backends(settings, ports=("store", "cache")) as backends:
        directory = TenantDirectory(backends.store, backends.cache, settings.secret_box())
        return await work(backends.store, directory)


def run_add(args: argparse.Namespace) -> int:
    try:
        tenant = tenant_from_args(args)
    except _UsageError as exc:
        print(f"wabridge tenants add: error: {exc}", file=sys.stderr)
        return 2

    shards = load_settings().shards
    if args.shard is not None and not 0 <= args.shard < shards:
        print(f"wabridge tenants add: error: --shard must be within 0..{shards - 1} (WABRIDGE_SHARDS)", file=sys.stderr)
        return 2

    async def work(store, directory) -> int:
        nonlocal tenant
        # Every tenant opened first: a WABRIDGE_SECRET_KEY that cannot read the others must not seal a new one (the
        # bridge would then refuse to start); it stops here with the CLI's one-line error instead.
        others = await store.list_tenants()
        previous = await store.get_tenant(tenant.tenant_id)
        shard = _placement(args.shard, previous, others, shards)
        tenant = msgspec.structs.replace(tenant, shard=shard)
        try:
            await store.put_tenant(tenant)
        except PhoneNumberTaken as exc:
            print(f"wabridge tenants add: error: {exc}", file=sys.stderr)
            return 1
        await directory.invalidate(tenant, previous=previous)
        existed = previous is not None
        if existed and previous.genesys_webhook_secret is not None and tenant.genesys_webhook_secret is None:
            # The update replaced the tenant whole; an operator who meant only to change a number should know.
            print(
                f"wabridge tenants add: note: tenant {tenant.tenant_id} no longer has a Genesys webhook secret "
                "(none was given)",
                file=sys.stderr,
            )
        print(f"{'updated' if existed else 'added'} tenant {tenant.tenant_id} ({', '.join(tenant.phone_number_ids)})")
        return 0

    return anyio.run(_with_store, work)


def _placement(asked: int | None, previous: TenantConfig | None, others: list[TenantConfig], shards: int) -> int | None:
    """The tenant's shard: the one asked for; else the one it has (None: routed by hash, as before placement); a new
    tenant, the least loaded."""
    if asked is None:
        if previous is not None:
            return previous.shard
        return least_loaded_shard([t.shard for t in others], shards)
    if previous is not None and previous.shard != asked:
        _note_move("add", previous, asked)
    return asked


def _note_move(command: str, previous: TenantConfig, shard: int) -> None:
    """Messages already queued on the old shard may be delivered after newer ones on the new shard."""
    moved_from = "its hash shard" if previous.shard is None else f"shard {previous.shard}"
    print(
        f"wabridge tenants {command}: note: tenant {previous.tenant_id} moves from {moved_from} to shard {shard}; "
        "its messages still queued there may arrive after newer ones (move a tenant while its queue is empty)",
        file=sys.stderr,
    )


def run_list(args: argparse.Namespace) -> int:
    async def work(store, directory) -> int:
        tenants = await store.list_tenants()
        if not tenants:
            print("no tenants")
        for t in tenants:
            print(
                f"{t.tenant_id}\tphone_number_ids={','.join(t.phone_number_ids)}\tapi={t.genesys_api_url}\t"
                f"integration={t.genesys_integration_id}\tcredentials={len(t.credentials)}\t"
                f"rate_limit={f'{t.rate_limit_per_minute}/min' if t.rate_limit_per_minute else 'none'}\t"
                f"webhook_secret={'set' if t.genesys_webhook_secret is not None else 'none'}\t"
                f"send_rate={f'{t.send_rate_per_second}/s' if t.send_rate_per_second else 'none'}\t"
                f"shard={'hash' if t.shard is None else t.shard}\t"
                f"read_marks={'on' if t.read_marks else 'off'}"
            )
        return 0

    return anyio.run(_with_store, work)


def run_place(args: argparse.Namespace) -> int:
    shards = load_settings().shards
    if args.shard is not None and not 0 <= args.shard < shards:
        print(
            f"wabridge tenants place: error: --shard must be within 0..{shards - 1} (WABRIDGE_SHARDS)", file=sys.stderr
        )
        return 2

    async def work(store, directory) -> int:
        tenant = await store.get_tenant(args.tenant_id)
        if tenant is None:
            print(f"wabridge tenants place: no tenant {args.tenant_id!r}", file=sys.stderr)
            return 1
        shard = args.shard
        if shard is None:
            others = [t.shard for t in await store.list_tenants() if t.tenant_id != tenant.tenant_id]
            shard = least_loaded_shard(others, shards)
        if shard != tenant.shard:
            _note_move("place", tenant, shard)
            await store.put_tenant(msgspec.structs.replace(tenant, shard=shard))
            await directory.invalidate(tenant)
        print(f"tenant {tenant.tenant_id} on shard {shard}")
        return 0

    return anyio.run(_with_store, work)


def run_remove(args: argparse.Namespace) -> int:
    async def work(store, directory) -> int:
        tenant = await store.get_tenant(args.tenant_id)
        if tenant is None or not await store.remove_tenant(args.tenant_id):
            print(f"wabridge tenants remove: no tenant {args.tenant_id!r}", file=sys.stderr)
            return 1
        await directory.invalidate(tenant)
        print(f"removed tenant {args.tenant_id}")
        return 0

    return anyio.run(_with_store, work)
