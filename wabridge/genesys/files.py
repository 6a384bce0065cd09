"""An agent's attachment from Genesys: one try at its download, for actors/agent_media.py (the GenesysFiles port).

The tenant's Genesys OAuth token goes along as Bearer only when the url's host is a Genesys host: the tenant's API
region (`api.mypurecloud.ie` → `mypurecloud.ie` and its subdomains, over the API's own scheme), or
`*.mypurecloud.*` / `*.pure.cloud` over https. Any other host gets no token: a link elsewhere must not learn a
credential for the tenant's Genesys org. Redirects are followed (up to 5), the token never sent past the origin it was
meant for, never from https to http; a host that resolves to a private, loopback or link-local address is refused
(`allow_private_urls` allows it, for simulators). Reading stops past `max_bytes`: a larger file is never held whole.

A 401 to the token drops it (the next try logs in again) and is `FetchFailed(reason="unauthorized")`; other answers
and errors are `FetchFailed(final=…)`: the caller decides about retries.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from wabridge.genesys.auth import LoginFailed, TokenProvider
from wabridge.http.client import AddressRefused, Http1Pools, HttpError, Reply, ReplyTooLarge
from wabridge.ports import FetchedFile, FetchFailed, FileTooLarge, TenantConfig

RETRYABLE = frozenset({408, 425, 429})  # and every 5xx
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5
MAX_ORIGINS = 64  # download pools kept: Genesys's download hosts and what they redirect to


def genesys_host(url: str, tenant: TenantConfig) -> bool:
    """Whether `url` is one of the tenant's Genesys hosts, which may be sent its OAuth token (module docstring)."""
    parts, api = urlsplit(url), urlsplit(tenant.genesys_api_url)
    host, api_host = (parts.hostname or "").lower(), (api.hostname or "").lower()
    if not host:
        return False
    region = api_host.removeprefix("api.") if api_host.count(".") >= 2 else api_host
    if region and (host == region or host == api_host or host.endswith("." + region)):
        return parts.scheme in ("https", api.scheme)
    labels = host.split(".")
    known = "mypurecloud" in labels[1:-1] or host.endswith(".pure.cloud")
    return known and parts.scheme == "https"


class AgentFiles:
    def __init__(
        self, tokens: TokenProvider, *, timeout: float = 30.0, concurrency: int = 8, allow_private_urls: bool = False
    ) -> None:
        self._tokens = tokens
        # The url is the agent's (Genesys's message): fetched from public addresses only, unless allowed.
        self._http = Http1Pools(
            max_pools=MAX_ORIGINS,
            limit=concurrency,
            timeout=timeout,
            connect_timeout=5.0,
            public_only=not allow_private_urls,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def download(self, tenant: TenantConfig, url: str, max_bytes: int) -> FetchedFile:
        token = None
        try:
            if genesys_host(url, tenant):
                token = await self._tokens.token(tenant)
            reply = await self._get(url, token, max_bytes)
        except ReplyTooLarge:
            raise FileTooLarge(f"more than {max_bytes} bytes") from None
        except LoginFailed as exc:
            raise FetchFailed(str(exc), final=exc.permanent) from None
        except TimeoutError:
            raise FetchFailed("timed out", final=False) from None
        except AddressRefused as exc:  # no retry makes a private address public
            raise FetchFailed(str(exc), final=True, reason="refused") from None
        except (HttpError, ValueError) as exc:  # ValueError: a url that is not http(s)
            raise FetchFailed(str(exc)[:200] or type(exc).__name__, final=False) from None
        status = reply.status
        if 200 <= status < 300:
            return FetchedFile(reply.body, reply.header("content-type"))
        if status == 401 and token is not None:
            # The token expired or was revoked: the next try logs in again.
            await self._tokens.invalidate(tenant, tenant.credentials[0], token)
            raise FetchFailed(f"HTTP {status}", final=True, reason="unauthorized")
        raise FetchFailed(f"HTTP {status}", final=status < 500 and status not in RETRYABLE)

    async def _get(self, url: str, token: str | None, max_bytes: int) -> Reply:
        """GET `url`, following redirects; the token goes only to the origin of the url it came with, and a redirect
        from https to http is refused (the file would travel in clear)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        origin, scheme = None, ""
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            here = f"{parts.scheme}://{parts.netloc}"
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if origin is None:
                origin = here
            elif here != origin:
                headers = {}  # and not back: once the url left the token's origin, it is not sent again
            if scheme == "https" and parts.scheme != "https":
                raise FetchFailed("its link redirected from https to http", final=True, reason="refused")
            scheme = parts.scheme
            reply = await self._http.request(here, "GET", target, headers, max_body=max_bytes)
            location = reply.header("location")
            if reply.status not in REDIRECTS or not location:
                return reply
            url = urljoin(url, location)
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects", final=False)
