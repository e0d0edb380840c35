"""The HTTP session kopf uses to reach the API server: the same credentials, fewer connections.

kopf's own session lets aiohttp open any number of connections. When a large fleet resumes at
operator start, every object's patch then opens its own TLS connection, and each one costs about
0.4 MiB (asyncio's 256 KiB read buffer, aiohttp's and OpenSSL's buffers): with 1,000 objects that
was most of the operator's peak memory. A bounded pool queues those requests on a few reused
connections instead. Watches hold their connection for minutes, so the bound leaves one
connection per watch stream on top of the ones for requests; a pool smaller than the watches
would starve them.
"""

from __future__ import annotations

import aiohttp
import kopf

# Streams kopf opens besides one per watched kind and namespace: the peering watch and the
# namespace watch used with namespace patterns.
EXTRA_STREAMS = 2


def connection_limit(watched_kinds: int, namespaces: int, request_connections: int) -> int:
    """Connections for every watch stream (one per kind and namespace, or per kind cluster-wide)
    plus `request_connections` for patches, applies and Events."""
    return watched_kinds * max(1, namespaces) + EXTRA_STREAMS + max(1, request_connections)


def bounded_session(info: kopf.ConnectionInfo, limit: int) -> kopf.AiohttpSession:
    """A kopf session for `info` whose pool holds at most `limit` connections. Must run in the
    operator's event loop (an async login handler), where aiohttp binds the session."""
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, ssl=info.as_ssl_context()),
        headers=info.as_http_headers(),
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        priority=info.priority,
        expiration=info.expiration,
    )
