"""Outbound HTTP for ingest sources, limited to addresses the operator allowed.

A source URL is a parameter, and parameters are data: whoever can start a flow run must not be able
to make the worker fetch its cloud metadata service, a database on loopback or a host on the private
network. So every connection of an ingest source goes through :class:`GuardedBackend`:

- only ``https`` and ``http`` URLs (``check_url``, before anything is sent);
- the host name is resolved here, *every* address it resolves to is checked, and the socket is opened
  to the checked address itself (the name is never resolved a second time, so a DNS answer that
  changes between check and connect cannot slip through); TLS still verifies the certificate of the
  URL's host name (SNI and the Host header come from the URL, only the TCP peer is pinned);
- addresses that are not globally routable are refused: loopback, private (10/8, 172.16/12,
  192.168/16, fc00::/7), link-local (169.254/16 with the cloud metadata address 169.254.169.254,
  fe80::/10), shared (100.64/10), multicast, reserved and unspecified addresses, IPv4 inside IPv6
  (``::ffff:127.0.0.1``), and the metadata address fd00:ec2::254;
- unless allowlisted in ``AIC_INGEST_ALLOWED_HOSTS`` (comma-separated host names, IP addresses or
  CIDR networks; a listed host name allows whatever it resolves to, a listed address or network
  allows those addresses under any name).

The check runs at connect time, so it covers the first URL, every redirect and every ``next`` link
alike. :func:`fetch` follows redirects itself (at most ``MAX_REDIRECTS``) so that request headers
given for the source's host (credentials) are dropped as soon as a redirect or link leaves that
host, and it streams bodies, stopping as soon as the size cap is passed.

Proxies from the environment are not used (``trust_env=False``): a proxy would make the check see
the proxy's address, not the target's. Egress controls in the network remain the operator's job;
this is the application's own boundary.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aicml.errors import SourceError

if TYPE_CHECKING:
    from blocks.settings import AicSettings

SCHEMES = ("https", "http")
MAX_REDIRECTS = 5
# Metadata services that are not covered by a non-global range everywhere (fd00:ec2::254 is in
# fc00::/7, which is already refused; kept explicit so that an allowlisted network never lets it in).
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class ForbiddenAddressError(SourceError):
    """A source URL points (or redirects, or links) to an address the operator did not allow."""


class ForbiddenSchemeError(SourceError):
    """A source URL uses a scheme other than https or http."""


class ResponseTooLargeError(SourceError):
    """A response body passed the size cap while it was being received."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, as the connection would use it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SourceError(f"Cannot resolve host {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _why_forbidden(ip: IPAddress) -> str | None:
    """The kind of address ``ip`` is when it must not be reached from a parameter, else None."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            inner = _why_forbidden(mapped)
            return f"{inner} (IPv4 inside IPv6)" if inner else None
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for test, name in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, test):
            return name
    if not ip.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class NetworkPolicy:
    """Which hosts an ingest source may reach beyond the public internet (plain data, picklable)."""

    allowed_hosts: tuple[str, ...] = ()
    resolver: Resolver | None = field(default=None, compare=False)
    # Only for code that builds a connector itself (a trusted caller); parameters never get this.
    allow_all: bool = False

    @classmethod
    def from_settings(cls, current: AicSettings | None = None) -> NetworkPolicy:
        """The operator's policy: ``AIC_INGEST_ALLOWED_HOSTS`` of the stack's settings (``current``,
        read here when None)."""
        from blocks.settings import AicSettings

        return cls(allowed_hosts=split_list((current or AicSettings()).ingest_allowed_hosts))

    def _networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        networks = []
        for entry in self.allowed_hosts:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                continue
        return networks

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".").strip("[]")
        return any(host == entry.lower().rstrip(".").strip("[]") for entry in self.allowed_hosts)

    def check_address(self, host: str, address: str) -> IPAddress:
        """The address, checked; raise ForbiddenAddressError naming host, address and why."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        reason = _why_forbidden(ip)
        if reason is None or self.allow_all or self.host_allowed(host):
            return ip
        if ip not in METADATA_ADDRESSES and any(ip in net for net in self._networks()):
            return ip
        raise ForbiddenAddressError(
            f"HTTP source host {_shown(host, ip)} is a {reason} address; ingest sources may only reach public "
            "addresses unless the operator lists the host in AIC_INGEST_ALLOWED_HOSTS."
        )

    def resolve(self, host: str, port: int) -> list[str]:
        """The checked addresses of ``host``: all of them must pass, or the host is refused."""
        bare = host.strip("[]")
        try:
            ipaddress.ip_address(bare.split("%", 1)[0])
            addresses = [bare]
        except ValueError:
            addresses = (self.resolver or system_resolver)(bare, port)
        if not addresses:
            raise SourceError(f"Host {host!r} resolves to no address.")
        for address in addresses:
            self.check_address(host, address)
        return addresses


def _shown(host: str, ip: IPAddress) -> str:
    """``host``, with the address it resolved to when it is a name."""
    bare = host.strip("[]")
    try:
        if ipaddress.ip_address(bare.split("%", 1)[0]) == ip:
            return bare
    except ValueError:
        pass
    return f"{bare} (resolves to {ip})"


def split_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ("a", "b", "c")."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def check_url(url: str, policy: NetworkPolicy) -> Any:
    """The parsed URL when its scheme is allowed and a literal-IP host passes; else a typed error.

    Names are resolved and checked again at connect time (:class:`GuardedBackend`).
    """
    import httpx

    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise SourceError(f"HTTP source URL {url!r} is not a valid URL: {exc}") from exc
    if parsed.scheme not in SCHEMES:
        raise ForbiddenSchemeError(
            f"HTTP source URL {url!r} uses scheme {parsed.scheme!r}; only https and http are allowed."
        )
    if not parsed.host:
        raise SourceError(f"HTTP source URL {url!r} names no host.")
    with contextlib.suppress(ValueError):  # a name: checked after resolution, at connect time
        policy.check_address(parsed.host, parsed.host)
    return parsed


def _backend_class() -> type:
    import httpcore

    class GuardedBackend(httpcore.SyncBackend):  # type: ignore[misc]
        """httpcore's network backend, connecting only to addresses the policy passed."""

        def __init__(self, policy: NetworkPolicy) -> None:
            self.policy = policy

        def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> Any:
            addresses = self.policy.resolve(host, port)
            last: Exception | None = None
            for address in addresses:
                try:
                    return super().connect_tcp(address, port, timeout, local_address, socket_options)
                except httpcore.ConnectError as exc:
                    last = exc
            assert last is not None
            raise last

    return GuardedBackend


def guarded_transport(policy: NetworkPolicy, timeout_s: float) -> Any:
    """An httpx transport whose every connection passes ``policy`` (the public httpcore API)."""
    import httpcore
    import httpx

    pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=_backend_class()(policy),
        max_connections=4,
    )

    class Transport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            req = httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=typing.cast(Iterable[bytes], request.stream),
                extensions={"timeout": {k: timeout_s for k in ("connect", "read", "write", "pool")}},
            )
            try:
                response = pool.handle_request(req)
            except httpcore.TimeoutException as exc:
                raise httpx.TimeoutException(str(exc), request=request) from exc
            except httpcore.NetworkError as exc:
                raise httpx.NetworkError(str(exc), request=request) from exc
            except httpcore.ProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc), request=request) from exc
            stream = typing.cast(Iterable[bytes], response.stream)

            class Body(httpx.SyncByteStream):
                def __iter__(self) -> Iterator[bytes]:
                    yield from stream

                def close(self) -> None:
                    closer = getattr(stream, "close", None)
                    if closer is not None:
                        closer()

            return httpx.Response(
                status_code=response.status,
                headers=response.headers,
                stream=Body(),
                extensions=response.extensions,
            )

        def close(self) -> None:
            pool.close()

    return Transport()


def _origin(url: Any) -> tuple[str, str, int | None]:
    return (url.scheme, url.host.lower(), url.port)


@dataclass
class GuardedClient:
    """A small HTTP client for ingest sources: checked connections, own redirects, capped bodies.

    ``headers`` go only to the origin (scheme, host, port) of ``origin_url``; any request to another
    origin (a redirect or a ``next`` link elsewhere) is sent without them.
    """

    policy: NetworkPolicy
    origin_url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    _client: Any = None

    def __enter__(self) -> GuardedClient:
        import httpx

        self._client = httpx.Client(
            transport=guarded_transport(self.policy, self.timeout_s),
            timeout=self.timeout_s,
            follow_redirects=False,
            trust_env=False,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def get(self, url: str, params: dict[str, Any] | None, budget: int, what: str) -> bytes:
        """The body of GET ``url`` (after redirects), at most ``budget`` bytes; typed errors otherwise."""
        import httpx

        origin = _origin(check_url(self.origin_url, self.policy))
        current = check_url(url, self.policy)
        for _ in range(MAX_REDIRECTS + 1):
            headers = self.headers if _origin(current) == origin else {}
            request = self._client.build_request("GET", current, params=params or None, headers=headers)
            try:
                response = self._client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise SourceError(f"HTTP source {str(current)!r} failed: {exc}") from exc
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    current = check_url(str(current.join(location)), self.policy)
                    params = None  # the Location carries its own query
                    continue
                if response.status_code >= 400:
                    raise SourceError(f"HTTP source {str(current)!r} failed: status {response.status_code}.")
                return read_limited(response, budget, what)
            finally:
                response.close()
        raise SourceError(f"HTTP source {url!r} redirected more than {MAX_REDIRECTS} times.")


def read_limited(response: Any, budget: int, what: str) -> bytes:
    """The (decoded) body of a streamed response, refused as soon as it passes ``budget`` bytes."""
    import httpx

    declared = response.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > budget
        and "content-encoding" not in response.headers
    ):
        raise ResponseTooLargeError(f"{what} announces {declared} bytes, more than the cap of {budget}.")
    chunks: list[bytes] = []
    total = 0
    try:
        for chunk in response.iter_bytes():
            total += len(chunk)
            if total > budget:
                raise ResponseTooLargeError(
                    f"{what} sent more than the cap of {budget} bytes; stopped reading it."
                )
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise SourceError(f"{what} failed while reading the body: {exc}") from exc
    return b"".join(chunks)


def fetch(url: str, policy: NetworkPolicy, max_bytes: int, timeout_s: float = 30.0) -> bytes:
    """One guarded GET of a file URL (no credentials), at most ``max_bytes``."""
    with GuardedClient(policy, url, timeout_s=timeout_s) as client:
        return client.get(url, None, max_bytes, f"HTTP source {url!r}")
