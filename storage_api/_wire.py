"""Wire protocol: the byte layout of everything that crosses a socket.

This docstring is the specification. All integers are little-endian.

Transports
----------
A backend listens on TCP and, on Linux, on an abstract Unix socket (``\0storage-api.<backend id>``)
for clients on its host. Every TCP connection is TLS 1.3 (nothing else is accepted there): the
backend presents a certificate signed by the deployment CA, which the client verifies (chain
only: any backend of the deployment is acceptable; when the client knows which backend it wants,
the certificate's common name must be that backend's id). TLS encrypts and authenticates every
byte in both directions. The client then authenticates inside TLS with the handshake below, so
one credential works on both transports. Unix sockets carry the handshake and frames directly.

Handshake (mutual authentication, before any frame)
---------------------------------------------------
The client holds a key ``K``: the deployment secret (backends and trusted clients, roles 1 and 2)
or its own credential's key (role 3), ``K = HMAC-SHA256(secret, b"storage-api credential " |
identity)``, which backends derive from the secret, so they keep no per-client keys. Nothing is
unpickled before the handshake completes.

1. server -> client, ``HELLO`` (38 bytes)::

       b"SAPI" | version u8 | reserved u8 (0) | server_nonce (32 random bytes)

2. client -> server, ``AUTH`` (71 + id_len bytes)::

       b"SAPI" | version u8 | role u8 | client_nonce (32) | client_proof (32) | id_len u8 | identity
       client_proof = HMAC-SHA256(K, b"storage-api client" | role | id_len | identity
                                     | server_nonce | client_nonce | binding)

   ``role`` is 1 for a client with the deployment secret, 2 for another backend, 3 for a client
   with a credential; ``identity`` (at most :data:`MAX_IDENTITY` bytes of ASCII) is empty for roles
   1 and 2 and the credential's id, ``<name>/<generation>``, for role 3.
   ``binding`` is SHA-256 of the backend's TLS certificate (DER) on TLS, empty on Unix sockets: a
   man in the middle with a certificate of its own cannot relay the proofs.

3. server -> client, ``WELCOME`` (33 bytes)::

       status u8 | server_proof (32)
       server_proof = HMAC-SHA256(K, b"storage-api server" | client_nonce | server_nonce | binding)

   ``status``: 0 accepted; 1 refused, wrong key; 2 refused, the credential was revoked (or never
   issued: its generation is not the one the deployment's registry holds). A refused client gets
   32 zero bytes as proof, then the server closes. The client checks ``server_proof`` too, so it
   never unpickles replies from a peer that lacks the key.

Each direction then has a session key (used on Unix sockets; on TLS the frames carry no MACs)::

    key_c2s = HMAC-SHA256(K, b"c2s" | server_nonce | client_nonce)
    key_s2c = HMAC-SHA256(K, b"s2c" | server_nonce | client_nonce)

Frames
------
After the handshake both directions carry frames. On Unix sockets::

    header (28 bytes):  kind u8 | flags u8 | nbuf u16 | req_id u32 | body_len u32 | head_mac (16)
    lengths:            nbuf x u64, the size of each out-of-band buffer
    body:               body_len bytes, a pickle (protocol 5) of the message
    body_mac (16)
    buffers:            nbuf raw buffers, back to back, in order
    buffers_mac (16):   only when nbuf > 0

with ``seq`` the number of frames already sent in that direction (starting at 0) and ``key`` the
session key of that direction::

    head_mac    = BLAKE2b-128(key, person "sa-head", seq u64 | header[:12])
    body_mac    = BLAKE2b-128(key, person "sa-body", seq u64 | header[:12] | lengths | body)
    buffers_mac = HMAC-SHA256(key, b"sa-buffers" | seq u64 | header[:12] | lengths | buffers)[:16]

The receiver checks each MAC before it goes on: ``head_mac`` before it allocates anything for the
lengths or the body (so a forged header costs it nothing), ``body_mac`` before it allocates the
buffers or unpickles anything, ``buffers_mac`` before the frame is delivered (a tampered buffer
byte closes the connection; the request is never served, so nothing is stored). Every byte of a
frame is therefore authenticated, and a frame that is forged, replayed, reordered or dropped fails
verification. Buffers use HMAC-SHA256, which runs at memory speed on CPUs with SHA extensions;
the short MACs use BLAKE2b, which is cheaper to set up.

On TLS the same frames carry no MACs (TLS authenticates every byte, in order, before it is
delivered: a tampered record closes the connection)::

    header (12 bytes) | lengths | body | buffers

Kinds: ``REQUEST`` (1), ``REPLY`` (2), ``ERROR`` (3), ``PING`` (4), ``PONG`` (5), ``EVENT`` (6).
Flags: bit 0, ``STREAM``: the buffers are the state of an object being made persistent; a backend
may write them to its log while they arrive (unreachable there until the frame is verified and
served).
``req_id`` pairs a ``REPLY``/``ERROR`` with its ``REQUEST``; many requests may be in flight on one
connection and replies come back in any order. ``PING`` is answered by ``PONG`` with the same
``req_id`` (liveness checks while a call runs). A backend also sends a ``PONG`` unasked whose body
is :data:`QUIET` (seconds, a double) before work that may keep it from answering pings that long
(loading a module, which can hold the interpreter lock for seconds), and one with 0 when that work
is over; other ``PONG`` bodies are empty. ``EVENT`` frames carry progress reports for a
request in flight.

Limits (:data:`MAX_BODY`, :data:`MAX_BUFFERS`, :data:`MAX_BUFFER`) are checked on every header;
a frame over a limit, with an unknown kind or a bad MAC is a :class:`ProtocolError` and closes that
connection only. Senders check them first (:func:`check_payload`): a request or reply over a limit
is refused before it is sent, with a :class:`~storage_api.errors.PayloadTooLarge` naming the limit.

Work before authentication
--------------------------
A backend runs every handshake in one thread, without blocking (no thread per connection before
it authenticates). The whole handshake has one deadline (``handshake_timeout``), not one per read.
Unauthenticated connections are capped in total (``max_pending``) and per source address
(``max_pending_per_host``); a new connection over a cap evicts the oldest unauthenticated one
(from the same address first), so slow senders cannot lock legitimate clients out, and a
descriptor table that fills up is relieved the same way.

Messages (the pickled bodies) are tuples; requests are ``(op, *params)`` and the backend dispatches
them through its handler table (``storage_api._backend._handlers``). Large buffers (numpy arrays,
``bytes`` wrapped in ``PickleBuffer``) travel out of band with pickle protocol 5 and are sent with
scatter-gather I/O straight from the object's memory and received straight into their final memory.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Final

from .errors import AuthenticationError, PayloadTooLarge, ProtocolError

MAGIC: Final = b"SAPI"
VERSION: Final = 2

ROLE_CLIENT: Final = 1
ROLE_PEER: Final = 2
ROLE_CREDENTIAL: Final = 3

REQUEST: Final = 1
REPLY: Final = 2
ERROR: Final = 3
PING: Final = 4
PONG: Final = 5
QUIET: Final = struct.Struct("<d")  # the body of a PONG that announces a silence (seconds)
EVENT: Final = 6
FLAG_STREAM: Final = 1
KINDS: Final = frozenset({REQUEST, REPLY, ERROR, PING, PONG, EVENT})

NONCE_BYTES: Final = 32
HELLO = struct.Struct("<4sBB32s")
AUTH = struct.Struct("<4sBB32s32sB")  # then id_len bytes of identity
WELCOME = struct.Struct("<B32s")
MAX_IDENTITY: Final = 128
ACCEPTED, REFUSED, REVOKED = 0, 1, 2

HEAD = struct.Struct("<BBHII")  # the header's fields (covered by every MAC of the frame)
MAC_BYTES: Final = 16
HEADER_SIZE: Final = HEAD.size + MAC_BYTES
SEQ = struct.Struct("<Q")

MAX_BODY: Final = 1 << 30  # 1 GiB of in-band pickle
MAX_BUFFERS: Final = 4096
MAX_BUFFER: Final = 1 << 40  # 1 TiB per buffer: large, but not absurd


def client_proof(key: bytes, role: int, identity: bytes, server_nonce: bytes, client_nonce: bytes,
                 binding: bytes = b"") -> bytes:
    msg = b"storage-api client" + bytes([role, len(identity)]) + identity + server_nonce + client_nonce + binding
    return hmac.digest(key, msg, "sha256")


def server_proof(key: bytes, server_nonce: bytes, client_nonce: bytes, binding: bytes = b"") -> bytes:
    return hmac.digest(key, b"storage-api server" + client_nonce + server_nonce + binding, "sha256")


def credential_key(secret: bytes, identity: str) -> bytes:
    """The key of the credential ``identity`` (``name/generation``), derived from the deployment secret."""
    return hmac.digest(secret, b"storage-api credential " + identity.encode(), "sha256")


def auth_message(key: bytes, role: int, identity: bytes, server_nonce: bytes, client_nonce: bytes,
                 binding: bytes = b"") -> bytes:
    proof = client_proof(key, role, identity, server_nonce, client_nonce, binding)
    return AUTH.pack(MAGIC, VERSION, role, client_nonce, proof, len(identity)) + identity


def session_keys(secret: bytes, server_nonce: bytes, client_nonce: bytes) -> tuple[bytes, bytes]:
    """Return ``(key_c2s, key_s2c)``."""
    salt = server_nonce + client_nonce
    return (hmac.digest(secret, b"c2s" + salt, "sha256"), hmac.digest(secret, b"s2c" + salt, "sha256"))


class Macs:
    """The MACs of one direction of a connection. Keyed hashes are set up once per key and copied
    per frame: keying a BLAKE2b costs a whole compression, and every frame needs two."""

    __slots__ = ("key", "_head", "_body")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._head = hashlib.blake2b(key=key, digest_size=MAC_BYTES, person=b"sa-head")
        self._body = hashlib.blake2b(key=key, digest_size=MAC_BYTES, person=b"sa-body")

    def head(self, seq: int, head: bytes) -> bytes:
        h = self._head.copy()
        h.update(SEQ.pack(seq) + head)
        return h.digest()

    def body(self, seq: int, head: bytes, lengths: bytes, body: bytes | memoryview) -> bytes:
        h = self._body.copy()
        h.update(SEQ.pack(seq) + head + lengths)
        h.update(body)
        return h.digest()


def head_mac(key: bytes, seq: int, head: bytes) -> bytes:
    return Macs(key).head(seq, head)


def body_mac(key: bytes, seq: int, head: bytes, lengths: bytes, body: bytes | memoryview) -> bytes:
    return Macs(key).body(seq, head, lengths, body)


def buffers_mac(key: bytes, seq: int, head: bytes, lengths: bytes) -> Any:
    """An HMAC object the caller feeds every buffer to, in order; its ``digest()[:16]`` is the MAC."""
    return hmac.new(key, b"sa-buffers" + SEQ.pack(seq) + head + lengths, "sha256")


def check_hello(data: bytes) -> bytes:
    """Validate a HELLO and return the server nonce."""
    magic, version, _reserved, nonce = HELLO.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("peer is not a storage_api backend (bad magic)")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    return nonce


def parse_auth(data: bytes) -> tuple[int, bytes, bytes, bytes]:
    """Split an AUTH message: ``(role, client_nonce, proof, identity)`` (``ProtocolError`` if malformed)."""
    magic, version, role, client_nonce, proof, id_len = AUTH.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise ProtocolError("bad handshake")
    if role not in (ROLE_CLIENT, ROLE_PEER, ROLE_CREDENTIAL):
        raise ProtocolError(f"unknown role {role}")
    identity = bytes(data[AUTH.size : AUTH.size + id_len])
    if len(identity) != id_len or (role == ROLE_CREDENTIAL) != bool(identity) or not identity.isascii():
        raise ProtocolError("bad identity in handshake")
    return role, client_nonce, proof, identity


def check_proof(key: bytes, role: int, identity: bytes, server_nonce: bytes, client_nonce: bytes, proof: bytes,
                binding: bytes = b"") -> None:
    expected = client_proof(key, role, identity, server_nonce, client_nonce, binding)
    if not hmac.compare_digest(expected, proof):
        raise AuthenticationError("peer failed to authenticate (wrong key)")


def check_header(kind: int, nbuf: int, body_len: int) -> None:
    if kind not in KINDS:
        raise ProtocolError(f"unknown frame kind {kind}")
    if nbuf > MAX_BUFFERS:
        raise ProtocolError(f"frame declares {nbuf} buffers (limit {MAX_BUFFERS})")
    if body_len > MAX_BODY:
        raise ProtocolError(f"frame body of {body_len} bytes exceeds the limit of {MAX_BODY}")


def check_payload(body_len: int, buffers: "list | tuple") -> None:
    """Refuse a message the peer would refuse, before sending any of it."""
    if body_len > MAX_BODY:
        raise PayloadTooLarge(f"message of {body_len} bytes exceeds the limit of {MAX_BODY} bytes (1 GiB) for "
                              "in-band data: send large data as numpy arrays or pickle.PickleBuffer, which travel "
                              "out of band")
    if len(buffers) > MAX_BUFFERS:
        raise PayloadTooLarge(f"message with {len(buffers)} out-of-band buffers exceeds the limit of {MAX_BUFFERS}")
    for b in buffers:
        n = memoryview(b).nbytes
        if n > MAX_BUFFER:
            raise PayloadTooLarge(f"out-of-band buffer of {n} bytes exceeds the limit of {MAX_BUFFER} bytes (1 TiB)")


def check_lengths(lengths: tuple[int, ...]) -> None:
    for n in lengths:
        if n > MAX_BUFFER:
            raise ProtocolError(f"frame declares a buffer of {n} bytes (limit {MAX_BUFFER})")
