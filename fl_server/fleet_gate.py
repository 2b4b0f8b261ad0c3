"""The coordinator's one network-facing port: a TLS front that forwards only
the Fleet API to the SuperLink on loopback.

Why: Flower 1.41 serves its Fleet, Control (`flwr run`, unauthenticated
without OIDC) and ServerAppIo/runtime APIs from ONE uvicorn app on ONE port,
told apart only by path (/v1/fleet, /v1/control, /v1/runtime). No flag binds
them apart (``--fleet-api-address``/``--control-api-address`` are deprecated
no-ops for the HTTP APIs). So the SuperLink is bound to 127.0.0.1 on a private
port and this gate, on the provisioned address and port, terminates TLS with
the server certificate and passes on a request only when its target is a
Fleet route; anything else gets 403 and a log line. Node authentication stays
Flower's (its signed headers are forwarded untouched).

One request per connection (``Connection: close`` towards the SuperLink, so
uvicorn closes after its answer and nothing can be smuggled behind a body);
bodies need a Content-Length (Flower's httpx client always sends one).

    python -m fl_server.fleet_gate --listen HOST:PORT [--listen ...] \
        --backend 127.0.0.1:PORT --cert server.pem --key server.key --ca ca.crt
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import ssl
import sys

GATE_READY = r"fleet gate listening on "  # its readiness log line
FLEET_TARGET = re.compile(rb"^/v1/fleet/[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")  # no '..', '%', '?'
_METHODS = (b"POST", b"GET")
MAX_HEAD = 16 * 1024
MAX_BODY = 256 * 1024 * 1024  # Flower chunks arrays into ~5 MB objects
HEAD_TIMEOUT = 30.0  # slow senders of headers are cut off
IO_TIMEOUT = 300.0
MAX_CONNECTIONS = 512
_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade", b"trailer"}


class Refused(Exception):
    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status, self.why = status, why


def split_hostport(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {text!r}: expected HOST:PORT")
    return host, int(port)


def parse_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], int]:
    """Check one request head; return (request line, headers to forward, body length)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise Refused(400, "not an HTTP/1.x request line")
    method, target, _ = parts
    if method not in _METHODS or not FLEET_TARGET.match(target):
        raise Refused(403, f"only the Fleet API is served here, not {method.decode(errors='replace')} "
                           f"{target[:120].decode(errors='replace')}")
    headers, length = [], 0
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise Refused(400, "malformed header line")
        key, value = name.lower(), value.strip()
        if key == b"transfer-encoding":
            raise Refused(411, "chunked bodies are not accepted (send Content-Length)")
        if key == b"content-length":
            if not value.isdigit() or (length and int(value) != length):
                raise Refused(400, "bad Content-Length")
            length = int(value)
            if length > MAX_BODY:
                raise Refused(413, "body too large")
        if key in _HOP:
            continue
        headers.append((name, value))
    return lines[0], headers, length


class Gate:
    def __init__(self, backend: tuple[str, int], server_ctx: ssl.SSLContext, backend_ctx: ssl.SSLContext):
        self.backend, self.server_ctx, self.backend_ctx = backend, server_ctx, backend_ctx
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        async with self.slots:
            try:
                await self._one(reader, writer)
            except Refused as e:
                print(f"fleet gate: refused {peer}: {e.why}", flush=True)
                body = (e.why + "\n").encode()
                writer.write(b"HTTP/1.1 %d Refused\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n" % (e.status, len(body)) + body)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as e:
                print(f"fleet gate: {peer}: {type(e).__name__}: {e}", flush=True)
            finally:
                try:
                    await asyncio.wait_for(writer.drain(), 5.0)
                except (OSError, asyncio.TimeoutError, ssl.SSLError):
                    pass
                writer.close()

    async def _one(self, reader, writer) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise Refused(431, "request head too large") from None
        line, headers, length = parse_head(head[:-4])
        up_r, up_w = await asyncio.wait_for(
            asyncio.open_connection(*self.backend, ssl=self.backend_ctx,
                                    server_hostname=self.backend[0]), IO_TIMEOUT)
        try:
            out = [line, *(n + b": " + v for n, v in headers), b"Connection: close", b"", b""]
            up_w.write(b"\r\n".join(out))
            left = length
            while left:
                chunk = await asyncio.wait_for(reader.read(min(left, 1 << 20)), IO_TIMEOUT)
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", left)
                up_w.write(chunk)
                left -= len(chunk)
                await up_w.drain()
            await up_w.drain()
            while chunk := await asyncio.wait_for(up_r.read(1 << 20), IO_TIMEOUT):
                writer.write(chunk)
                await writer.drain()
        finally:
            up_w.close()


def contexts(cert: str, key: str, ca: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.minimum_version = ssl.TLSVersion.TLSv1_2
    srv.load_cert_chain(cert, key)
    srv.set_alpn_protocols(["http/1.1"])
    cli = ssl.create_default_context(cafile=ca)  # the SuperLink's certificate names 127.0.0.1
    return srv, cli


async def serve(listen: list[tuple[str, int]], backend: tuple[str, int], cert: str, key: str, ca: str) -> None:
    srv_ctx, cli_ctx = contexts(cert, key, ca)
    gate = Gate(backend, srv_ctx, cli_ctx)
    servers = []
    for host, port in listen:
        try:
            servers.append(await asyncio.start_server(gate.handle, host, port, ssl=srv_ctx,
                                                      limit=MAX_HEAD, reuse_address=True))
        except OSError as e:
            raise SystemExit(f"fleet gate: cannot listen on {host}:{port}: {e.strerror}. If that "
                             "address is not on this machine (NAT, load balancer), give `--listen` "
                             "an address that is, e.g. 0.0.0.0") from None
    bound = [s.getsockname() for srv in servers for s in srv.sockets]
    print(GATE_READY + ", ".join(f"{b[0]}:{b[1]}" for b in bound) +
          f" -> SuperLink Fleet API at {backend[0]}:{backend[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fl_server.fleet_gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", action="append", required=True, help="HOST:PORT to serve (repeatable)")
    p.add_argument("--backend", required=True, help="the SuperLink's loopback HOST:PORT")
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    a = p.parse_args(argv)
    try:
        listen = [split_hostport(x) for x in a.listen]
        backend = split_hostport(a.backend)
    except ValueError as e:
        p.error(str(e))
    asyncio.run(serve(listen, backend, a.cert, a.key, a.ca))
    return 0


if __name__ == "__main__":
    sys.exit(main())
