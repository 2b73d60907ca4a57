"""ClickHouse's HTTP interface, served over the embedded chdb engine.

Only one OS process may open a chdb data path, so this process owns the
warehouse and every other component talks HTTP to it, exactly as it would to a
real ClickHouse server: clickhouse-connect (sync and async clients) and curl.

What a request may carry, as ClickHouse defines it:

* ``GET /ping`` answers ``Ok.``; any other path but ``/`` is a 404.
* The SQL is the ``query`` URL parameter followed by a newline and the request
  body (either may be empty); a ``multipart/form-data`` body may carry
  ``query`` and ``param_*`` fields instead.
* ``INSERT ... FORMAT X`` takes its rows from whatever follows the format name,
  streamed into the engine in that input format.
* ``database`` selects the current database, ``default_format`` the output
  format when the SQL has no ``FORMAT`` clause (else ``TabSeparated``),
  ``param_<name>`` binds ``{name:Type}`` placeholders, ``session_id`` pins the
  request to a session whose ``SET``/``USE`` state persists; other parameters
  are ClickHouse settings applied to this query only.
* Bodies may be sent with ``Content-Encoding`` gzip, deflate, lz4 or zstd;
  responses are compressed with the first supported ``Accept-Encoding`` when
  ``enable_http_compression=1``.
* Failures answer with ClickHouse's status, the ``X-ClickHouse-Exception-Code``
  header and a ``Code: N. DB::Exception: ...`` body.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import gzip
import json
import logging
import re
import signal
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
from backports import zstd
from chdb import _chdb

logger = logging.getLogger(__name__)

# ClickHouse error codes this module raises itself.
CANNOT_PARSE_TEXT = 6
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_COMPRESSION_METHOD = 89
UNKNOWN_SETTING = 115
TIMEOUT_EXCEEDED = 159
READONLY = 164
NETWORK_ERROR = 210
CANNOT_DECOMPRESS = 271
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
AUTHENTICATION_FAILED = 516
STD_EXCEPTION = 1001

_CANNOT_PARSE_CODES = (6, 25, 26, 27, 38, 41, 72, 376, 441, 675, 676)
_MALFORMED_QUERY_CODES = (15, 36, 37, 44, 53, 62, 117, 123, 167, 168, 223, 321, 427)
# HTTP status per error code, as ClickHouse's HTTP handler maps them.
_STATUS_BY_CODE: dict[int, int] = {
    194: 401,
    **dict.fromkeys((192, 193, 512, 516), 403),
    **dict.fromkeys((*_CANNOT_PARSE_CODES, *_MALFORMED_QUERY_CODES), 400),
    **dict.fromkeys((46, 47, 50, 56, 60, 63, 73, 78, 81, 115, 152, 336, 511), 404),
    159: 408,
    229: 413,
    381: 411,
    48: 501,
    **dict.fromkeys((76, 209, 439), 503),
}

_CODE_RE = re.compile(r"Code: (\d+)\. ")
_VERSION_SUFFIX_RE = re.compile(r"\s*\(version [^)]*\)\s*$")

# URL parameters that steer the HTTP layer and are never forwarded as settings.
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "http_wait_end_of_query",
        "client_protocol_version",
        "role",
        "quota_key",
        "user",
        "password",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "http_response_buffer_size",
    }
)
# Settings that cannot be taken back once set: the connection is dropped after use.
_IRREVERSIBLE_SETTINGS = frozenset({"readonly"})
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

_DEFAULT_SESSION_TIMEOUT = 60.0
_MAX_SESSION_TIMEOUT = 3600.0
_KEEP_ALIVE_SECONDS = 10
_IDLE_CONNECTION_SECONDS = 60.0


class WarehouseError(Exception):
    """A failure to report the way ClickHouse does: code, message, HTTP status."""

    def __init__(self, code: int, message: str, *, http_status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self._http_status = http_status

    @property
    def status(self) -> int:
        """HTTP status ClickHouse answers with for this error code."""
        return self._http_status or _STATUS_BY_CODE.get(self.code, 500)

    @classmethod
    def from_engine(cls, exc: BaseException) -> WarehouseError:
        """Wrap an engine exception, taking the code from its ``Code: N.`` text."""
        text = str(exc)
        match = _CODE_RE.search(text)
        if match is None:
            return cls(STD_EXCEPTION, f"Code: {STD_EXCEPTION}. DB::Exception: {text}")
        message = _VERSION_SUFFIX_RE.sub("", text[match.start() :])
        return cls(int(match.group(1)), message)

    @classmethod
    def new(cls, code: int, name: str, text: str) -> WarehouseError:
        """Build an error with ClickHouse's message layout."""
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")


# ---------------------------------------------------------------------------
# Authentication


class Authenticator(Protocol):
    """Decides whether a user may run queries; the password is never logged."""

    def __call__(self, user: str, password: str, address: str) -> bool: ...


def allow_all(user: str, password: str, address: str) -> bool:
    """Accept every user: the server listens on loopback only for now."""
    return True


@dataclass(frozen=True)
class Credentials:
    """Who a request claims to be."""

    user: str = "default"
    password: str = field(default="", repr=False)


def credentials_from(
    headers: Mapping[str, str], params: Mapping[str, str]
) -> Credentials:
    """Read credentials as ClickHouse does: Basic auth, X-ClickHouse-*, or URL.

    ``headers`` must have lower-cased names.
    """
    auth = headers.get("authorization", "")
    if auth.startswith("Basic "):
        with contextlib.suppress(ValueError):
            raw = base64.b64decode(auth[6:], validate=True).decode()
            user, _, password = raw.partition(":")
            return Credentials(user or "default", password)
    if "x-clickhouse-user" in headers:
        return Credentials(
            headers["x-clickhouse-user"], headers.get("x-clickhouse-key", "")
        )
    return Credentials(params.get("user", "default"), params.get("password", ""))


# ---------------------------------------------------------------------------
# Bodies: transfer and content encodings


def decode_content(body: bytes, encoding: str) -> bytes:
    """Undo a ``Content-Encoding``; concatenated frames/members are all read."""
    encoding = encoding.strip().lower()
    try:
        if encoding in ("", "identity"):
            return body
        if encoding in ("gzip", "x-gzip"):
            return _inflate(body, GZIP_WBITS)
        if encoding == "deflate":
            return _inflate(body, zlib.MAX_WBITS)
        if encoding == "zstd":
            return zstd.decompress(body)
        if encoding == "lz4":
            return _lz4_decompress_frames(body)
    except (OSError, EOFError, RuntimeError, ValueError, zlib.error) as exc:
        raise WarehouseError.new(
            CANNOT_DECOMPRESS, "CANNOT_DECOMPRESS", f"Cannot decompress body: {exc}"
        ) from exc
    except zstd.ZstdError as exc:
        raise WarehouseError.new(
            CANNOT_DECOMPRESS, "CANNOT_DECOMPRESS", f"Cannot decompress body: {exc}"
        ) from exc
    raise WarehouseError.new(
        UNKNOWN_COMPRESSION_METHOD,
        "UNKNOWN_COMPRESSION_METHOD",
        f"Unknown Content-Encoding of HTTP request: {encoding}",
    )


#: Largest request body accepted after decompression (a guard against bombs):
#: far above the sink's batches, far below the machine's memory.
MAX_INFLATED_BYTES = 512 * 1024 * 1024
#: zlib's window bits for a gzip wrapper.
GZIP_WBITS = 16 + zlib.MAX_WBITS


def _inflate(body: bytes, wbits: int) -> bytes:
    """gzip or deflate, refusing output past MAX_INFLATED_BYTES; concatenated
    gzip members are all read."""
    out = bytearray()
    rest = body
    while rest:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(rest, MAX_INFLATED_BYTES + 1 - len(out))
        if len(out) > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
            raise ValueError(
                f"the body inflates past {MAX_INFLATED_BYTES} bytes; send less"
            )
        if not inflater.eof:
            raise ValueError("truncated compressed body")
        rest = inflater.unused_data
    return bytes(out)


def _lz4_decompress_frames(body: bytes) -> bytes:
    """Decompress a sequence of concatenated LZ4 frames."""
    out = bytearray()
    rest = body
    while rest:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        out += decompressor.decompress(rest)
        if not decompressor.eof:
            raise ValueError("truncated lz4 frame")
        rest = decompressor.unused_data
    return bytes(out)


_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "lz4": lambda data: bytes(lz4.frame.compress(data)),
    "zstd": lambda data: bytes(zstd.compress(data)),
    "gzip": lambda data: gzip.compress(data, compresslevel=3),
    "deflate": lambda data: zlib.compress(data, 3),
}


def pick_encoding(accept_encoding: str) -> str | None:
    """Return the first encoding in ``Accept-Encoding`` this server can produce."""
    for part in accept_encoding.split(","):
        name = part.split(";", 1)[0].strip().lower()
        if name in _COMPRESSORS:
            return name
    return None


def compress(data: bytes, encoding: str) -> bytes:
    """Compress a whole response body with a name from :func:`pick_encoding`."""
    return _COMPRESSORS[encoding](data)


# ---------------------------------------------------------------------------
# SQL scanning: just enough lexing to find FORMAT clauses and inline data

_WORD_RE = re.compile(rb"[A-Za-z0-9_]+")
_FORMAT_NAME_RE = re.compile(rb"\s+([A-Za-z_][A-Za-z0-9_]*)")
_LEADING_INSERT_RE = re.compile(
    rb"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*INSERT\b", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True)
class FormatClause:
    """A top-level ``FORMAT name`` clause found in SQL text."""

    start: int  # offset of the FORMAT keyword
    name: str
    data_start: int  # offset where inline data would begin


def _skip_quoted(buf: bytes, i: int) -> int:
    """Return the offset just past the quoted literal or identifier at ``i``."""
    quote = buf[i]
    j = i + 1
    while j < len(buf):
        ch = buf[j]
        if ch == 0x5C:  # backslash escapes the next byte
            j += 2
            continue
        if ch == quote:
            if j + 1 < len(buf) and buf[j + 1] == quote:
                j += 2
                continue
            return j + 1
        j += 1
    return len(buf)


def _skip_comment(buf: bytes, i: int) -> int | None:
    """Return the offset past a comment starting at ``i``, or None if none does."""
    if buf.startswith(b"--", i):
        end = buf.find(b"\n", i)
        return len(buf) if end < 0 else end + 1
    if buf.startswith(b"/*", i):
        end = buf.find(b"*/", i + 2)
        return len(buf) if end < 0 else end + 2
    return None


def _data_start(buf: bytes, i: int) -> int:
    """Skip the blanks and one line break that separate a format name from data."""
    while i < len(buf) and buf[i] in b" \t":
        i += 1
    if i < len(buf) and buf[i] == 0x0D:
        i += 1
    if i < len(buf) and buf[i] == 0x0A:
        i += 1
    return i


def find_format_clause(buf: bytes, *, first: bool) -> FormatClause | None:
    """Find a top-level ``FORMAT name`` outside literals, comments and parens.

    With ``first`` the scan stops at the first clause (an INSERT's data follows
    it and must not be lexed); otherwise the last clause wins.
    """
    found: FormatClause | None = None
    i, depth = 0, 0
    while i < len(buf):
        ch = buf[i]
        if ch in b"'\"`":
            i = _skip_quoted(buf, i)
            continue
        skipped = _skip_comment(buf, i)
        if skipped is not None:
            i = skipped
            continue
        depth += (ch == 0x28) - (ch == 0x29)
        word = _WORD_RE.match(buf, i)
        if word is None:
            i += 1
            continue
        i = word.end()
        if depth != 0 or word.group().upper() != b"FORMAT":
            continue
        name = _FORMAT_NAME_RE.match(buf, i)
        if name is None:
            continue
        found = FormatClause(word.start(), name.group(1).decode(), name.end())
        if first:
            return FormatClause(found.start, found.name, _data_start(buf, name.end()))
        i = name.end()
    return found


def is_insert(buf: bytes) -> bool:
    """True when the SQL text starts with INSERT (after blanks and comments)."""
    return _LEADING_INSERT_RE.match(buf) is not None


# ---------------------------------------------------------------------------
# Requests and results


@dataclass
class QueryRequest:
    """One HTTP request, reduced to what the engine needs.

    ``sql`` is the complete text (query parameter, newline, body); for an
    INSERT with a FORMAT clause it includes the inline data.
    """

    sql: bytes
    settings: dict[str, str]
    params: dict[str, str]
    database: str | None = None
    default_format: str = "TabSeparated"
    session_id: str | None = None
    session_timeout: float = _DEFAULT_SESSION_TIMEOUT
    session_check: bool = False
    read_only: bool = False


@dataclass
class QueryResult:
    """What the engine produced: body bytes, output format and counters."""

    body: bytes = b""
    output_format: str | None = None
    summary: dict[str, str] = field(default_factory=dict)


def _summary(
    read_rows: int = 0,
    read_bytes: int = 0,
    written_rows: int = 0,
    written_bytes: int = 0,
    elapsed: float = 0.0,
) -> dict[str, str]:
    """Build an ``X-ClickHouse-Summary`` payload (ClickHouse sends strings)."""
    return {
        "read_rows": str(read_rows),
        "read_bytes": str(read_bytes),
        "written_rows": str(written_rows),
        "written_bytes": str(written_bytes),
        "total_rows_to_read": str(read_rows),
        "result_rows": "0",
        "result_bytes": "0",
        "elapsed_ns": str(int(elapsed * 1e9)),
    }


def parse_request(
    url_params: Mapping[str, str], body: bytes, *, method: str
) -> QueryRequest:
    """Split URL parameters into settings, bind parameters and transport fields."""
    query = url_params.get("query", "").encode()
    sql = query + b"\n" + body if query and body else query or body
    settings = {
        k: v
        for k, v in url_params.items()
        if k not in _TRANSPORT_PARAMS and not k.startswith("param_")
    }
    params = {k[6:]: v for k, v in url_params.items() if k.startswith("param_")}
    timeout = _float_param(url_params, "session_timeout", _DEFAULT_SESSION_TIMEOUT)
    return QueryRequest(
        sql=sql,
        settings=settings,
        params=params,
        database=url_params.get("database") or None,
        default_format=url_params.get("default_format") or "TabSeparated",
        session_id=url_params.get("session_id") or None,
        session_timeout=min(timeout, _MAX_SESSION_TIMEOUT),
        session_check=url_params.get("session_check", "0") not in ("", "0"),
        read_only=method == "GET",
    )


def _float_param(params: Mapping[str, str], name: str, default: float) -> float:
    """Read a numeric URL parameter, answering BAD_ARGUMENTS when it is not."""
    raw = params.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise WarehouseError.new(
            BAD_ARGUMENTS, "BAD_ARGUMENTS", f"Invalid {name}: {raw!r}"
        ) from None


# ---------------------------------------------------------------------------
# The engine: chdb connections with their session state


# The engine binding; its shipped stub does not declare connect().
_ENGINE: Any = _chdb


def _quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _quote_literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class EngineConnection:
    """One chdb connection (an engine session) and the state we put on it.

    Not thread-safe by itself: callers hold ``lock`` while using it. Tracks the
    current database and the settings applied by earlier requests, so each
    request only sends the difference.
    """

    def __init__(self, path: Path) -> None:
        # The engine binding itself: chdb.connect() wraps it but hides
        # classify_query and turns errors into ChdbError.
        self._conn: Any = _ENGINE.connect(str(path))
        self.lock = threading.Lock()
        self.database: str | None = "default"
        self.applied: dict[str, str] = {}
        self.tainted = False  # state we cannot reset: drop after use
        self.last_used = time.monotonic()

    def close(self) -> None:
        """Close the chdb connection; the object is unusable afterwards."""
        self._conn.close()

    def prepare(self, database: str | None, settings: Mapping[str, str]) -> None:
        """Make ``database`` current and exactly ``settings`` applied."""
        if database is not None and database != self.database:
            self._run(f"USE {_quote_identifier(database)}")
            self.database = database
        self._sync_settings(settings)

    def _sync_settings(self, settings: Mapping[str, str]) -> None:
        for name in settings:
            if not _SETTING_NAME_RE.match(name):
                raise WarehouseError.new(
                    UNKNOWN_SETTING, "UNKNOWN_SETTING", f"Unknown setting {name!r}"
                )
        stale = [name for name in self.applied if name not in settings]
        changed = {k: v for k, v in settings.items() if self.applied.get(k) != v}
        if stale:
            self._run("SET " + ", ".join(f"{name} = DEFAULT" for name in stale))
            for name in stale:
                del self.applied[name]
        if not changed:
            return
        self.tainted |= not _IRREVERSIBLE_SETTINGS.isdisjoint(changed)
        try:
            self._run(
                "SET "
                + ", ".join(f"{k} = {_quote_literal(v)}" for k, v in changed.items())
            )
            self.applied.update(changed)
        except WarehouseError:
            self._set_one_by_one(changed)
            raise

    def _set_one_by_one(self, changed: Mapping[str, str]) -> None:
        """After a failed batch SET, apply what is valid so tracking stays exact."""
        for name, value in changed.items():
            try:
                self._run(f"SET {name} = {_quote_literal(value)}")
            except WarehouseError:
                continue
            self.applied[name] = value

    def _run(self, sql: str) -> None:
        try:
            self._conn.query(sql, "TabSeparated")
        except RuntimeError as exc:
            raise WarehouseError.from_engine(exc) from exc

    def classify(self, sql: str) -> tuple[str, int]:
        """Return the engine's class name for ``sql`` and its statement count."""
        info = self._conn.classify_query(sql)
        return str(info["query_class"].name), int(info["statement_count"])

    def query(self, sql: str, fmt: str, params: Mapping[str, str]) -> QueryResult:
        """Run one statement, returning its output in ``fmt``."""
        try:
            res = self._conn.query(sql, fmt, params=dict(params))
        except RuntimeError as exc:
            raise WarehouseError.from_engine(exc) from exc
        summary = _summary(
            res.rows_read(),
            res.bytes_read(),
            res.rows_written(),
            res.bytes_written(),
            res.elapsed(),
        )
        return QueryResult(bytes(res.bytes()), fmt, summary)

    def insert(self, head: str, fmt: str, data: bytes) -> QueryResult:
        """Stream ``data`` (encoded in ``fmt``) into the INSERT statement ``head``."""
        try:
            inserter = self._conn.send_insert(head, fmt)
        except RuntimeError as exc:
            raise WarehouseError.from_engine(exc) from exc
        try:
            if data:
                self._conn.insert_append(inserter, data)
            res = self._conn.insert_done(inserter)
        except RuntimeError as exc:
            with contextlib.suppress(RuntimeError):
                self._conn.insert_cancel(inserter)
            raise WarehouseError.from_engine(exc) from exc
        summary = _summary(
            written_rows=res.rows_written(),
            written_bytes=res.bytes_written(),
            elapsed=res.elapsed(),
        )
        return QueryResult(b"", None, summary)


@dataclass
class _Session:
    conn: EngineConnection
    timeout: float

    def expired(self, now: float) -> bool:
        return now - self.conn.last_used > self.timeout


class Warehouse:
    """The chdb data path and the connections that serve requests on it.

    Requests without a session borrow a pooled connection; requests with a
    ``session_id`` get a connection of their own that keeps ``SET``/``USE``
    state until the session times out. Thread-safe.
    """

    def __init__(self, path: Path, *, pool_size: int = 8) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._idle: list[EngineConnection] = []
        self._sessions: dict[str, _Session] = {}
        self._closed = False
        # The first connection initialises the engine; it is kept for the info.
        self._home = EngineConnection(path)
        info = self._home.query("SELECT version(), timezone()", "TabSeparated", {})
        version, _, tz = info.body.decode().strip().partition("\t")
        self.version, self.timezone = version, tz

    def close(self) -> None:
        """Close every connection; in-flight requests must have finished."""
        with self._lock:
            self._closed = True
            conns = [*self._idle, *(s.conn for s in self._sessions.values())]
            self._idle.clear()
            self._sessions.clear()
        for conn in conns:
            with conn.lock:
                conn.close()
        self._home.close()

    def execute(self, request: QueryRequest) -> QueryResult:
        """Run one request's SQL on a suitable connection."""
        database = request.database
        if database is None and request.session_id is None:
            database = "default"
        with self._connection(request) as conn:
            conn.prepare(database, request.settings)
            try:
                return self._dispatch(conn, request)
            finally:
                conn.last_used = time.monotonic()

    @contextlib.contextmanager
    def _connection(self, request: QueryRequest) -> Iterator[EngineConnection]:
        if request.session_id is None:
            with self._pooled(request) as conn:
                yield conn
            return
        conn = self._session(request)
        if not conn.lock.acquire(blocking=False):
            raise WarehouseError.new(
                SESSION_IS_LOCKED,
                "SESSION_IS_LOCKED",
                f"Session {request.session_id} is locked by a concurrent client",
            )
        try:
            yield conn
        finally:
            conn.lock.release()
            if conn.tainted:
                self._drop_session(request.session_id)

    @contextlib.contextmanager
    def _pooled(self, request: QueryRequest) -> Iterator[EngineConnection]:
        if not self._slots.acquire(timeout=300):
            raise WarehouseError.new(
                TIMEOUT_EXCEEDED, "TIMEOUT_EXCEEDED", "No free engine connection"
            )
        try:
            conn = self._borrow()
            reusable = False
            try:
                with conn.lock:
                    yield conn
                reusable = True
            except WarehouseError:
                reusable = True  # the engine reported it; our tracking holds
                raise
            finally:
                conn.tainted |= not reusable
                self._give_back(conn)
        finally:
            self._slots.release()

    def _borrow(self) -> EngineConnection:
        with self._lock:
            if self._closed:
                raise WarehouseError.new(
                    NETWORK_ERROR, "NETWORK_ERROR", "Server is shutting down"
                )
            if self._idle:
                return self._idle.pop()
        return EngineConnection(self.path)

    def _give_back(self, conn: EngineConnection) -> None:
        """Return a pooled connection, unless a statement left state we can't undo."""
        if conn.tainted:
            conn.close()
            return
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _session(self, request: QueryRequest) -> EngineConnection:
        assert request.session_id is not None
        now = time.monotonic()
        with self._lock:
            self._expire_sessions(now)
            session = self._sessions.get(request.session_id)
            if session is None and request.session_check:
                raise WarehouseError.new(
                    SESSION_NOT_FOUND,
                    "SESSION_NOT_FOUND",
                    f"Session {request.session_id} not found",
                )
            if session is None:
                session = _Session(EngineConnection(self.path), request.session_timeout)
                self._sessions[request.session_id] = session
            session.timeout = request.session_timeout
            return session.conn

    def _expire_sessions(self, now: float) -> None:
        """Close idle sessions past their timeout (caller holds ``_lock``)."""
        for sid, session in list(self._sessions.items()):
            if session.expired(now) and session.conn.lock.acquire(blocking=False):
                del self._sessions[sid]
                session.conn.close()
                session.conn.lock.release()

    def _drop_session(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            with session.conn.lock:
                session.conn.close()

    def _dispatch(self, conn: EngineConnection, request: QueryRequest) -> QueryResult:
        if is_insert(request.sql):
            clause = find_format_clause(request.sql, first=True)
            if clause is not None:
                return self._insert(conn, request, clause)
        return self._query(conn, request)

    def _insert(
        self, conn: EngineConnection, request: QueryRequest, clause: FormatClause
    ) -> QueryResult:
        head = _text(request.sql[: clause.start]).strip()
        self._check_statement(conn, f"{head} FORMAT {clause.name}", request)
        return conn.insert(head, clause.name, request.sql[clause.data_start :])

    def _query(self, conn: EngineConnection, request: QueryRequest) -> QueryResult:
        sql = _text(request.sql)
        if not sql.strip():
            raise WarehouseError.new(SYNTAX_ERROR, "SYNTAX_ERROR", "Empty query")
        kind = self._check_statement(conn, sql, request)
        clause = find_format_clause(request.sql, first=False)
        fmt = clause.name if clause is not None else request.default_format
        result = conn.query(sql, fmt, request.params)
        if kind == "CONTROL":
            # SET/USE/SYSTEM: a session keeps the effect, a pooled connection
            # is retired; the current database is no longer known.
            conn.tainted |= request.session_id is None
            conn.database = None
        if kind != "READ_ONLY" and not result.body:
            result.output_format = None
        return result

    @staticmethod
    def _check_statement(
        conn: EngineConnection, sql: str, request: QueryRequest
    ) -> str:
        """Reject what ClickHouse's HTTP interface rejects; return the class."""
        kind, count = conn.classify(sql)
        if count > 1:
            raise WarehouseError.new(
                SYNTAX_ERROR, "SYNTAX_ERROR", "Multi-statements are not allowed"
            )
        if request.read_only and kind == "MUTATING":
            raise WarehouseError.new(
                READONLY,
                "READONLY",
                "Cannot execute query in readonly mode. For queries over HTTP, "
                "method GET implies readonly. You should use method POST for "
                "modifying queries",
            )
        return kind


def _text(sql: bytes) -> str:
    """Decode SQL text, answering CANNOT_PARSE_TEXT for invalid UTF-8."""
    try:
        return sql.decode()
    except UnicodeDecodeError as exc:
        raise WarehouseError.new(
            CANNOT_PARSE_TEXT, "CANNOT_PARSE_TEXT", f"Query is not valid UTF-8: {exc}"
        ) from None


# ---------------------------------------------------------------------------
# HTTP

_TEXT_PLAIN = "text/plain; charset=UTF-8"
_TEXT_FORMAT_PREFIXES = (
    "pretty",
    "vertical",
    "markdown",
    "values",
    "template",
    "custom",
    "raw",
    "lineasstring",
    "prometheus",
    "null",
)


def content_type_for(fmt: str | None) -> str:
    """The Content-Type ClickHouse sends for an output format."""
    low = (fmt or "").lower()
    if not low or low.startswith(_TEXT_FORMAT_PREFIXES):
        return _TEXT_PLAIN
    if low.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if low.startswith("csv"):
        return "text/csv; charset=UTF-8; header=absent"
    if "eachrow" in low or low in ("jsonlines", "ndjson"):
        return "application/x-ndjson; charset=UTF-8"
    if low.startswith("json"):
        return "application/json; charset=UTF-8"
    if low == "xml":
        return "application/xml; charset=UTF-8"
    return "application/octet-stream"


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """Read the text fields of a ``multipart/form-data`` body.

    File fields (ClickHouse's external tables) are not supported and answer
    NOT_IMPLEMENTED.
    """
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    for part in message.walk():
        if part.is_multipart():
            continue
        if part.get_filename() is not None:
            raise WarehouseError.new(
                NOT_IMPLEMENTED, "NOT_IMPLEMENTED", "External tables are not supported"
            )
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload.decode()
    return fields


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false")


class _HttpServer(ThreadingHTTPServer):
    """The listening socket, its handler threads, and what they share."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        warehouse: Warehouse,
        authenticator: Authenticator,
    ) -> None:
        self.warehouse = warehouse
        self.authenticator = authenticator
        self.display_name = socket.gethostname()
        self.closing = False
        self._state = threading.Condition()
        self._active = 0
        self._sockets: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def track(self, sock: socket.socket, *, open_: bool) -> None:
        """Remember or forget an accepted connection."""
        with self._state:
            if open_:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    @contextlib.contextmanager
    def request_scope(self) -> Iterator[None]:
        """Count a request as in flight; refuse it once shutdown began."""
        with self._state:
            if self.closing:
                raise WarehouseError(
                    NETWORK_ERROR,
                    f"Code: {NETWORK_ERROR}. DB::Exception: Server is shutting down. "
                    "(NETWORK_ERROR)",
                    http_status=503,
                )
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()

    def drain(self, timeout: float) -> None:
        """Refuse new requests, wait for in-flight ones, drop idle connections."""
        with self._state:
            self.closing = True
            self._state.wait_for(lambda: self._active == 0, timeout)
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``/`` and ``/ping`` the way ClickHouse's HTTP handler does."""

    protocol_version = "HTTP/1.1"
    server_version = "meterline-warehouse"
    disable_nagle_algorithm = True  # else Nagle adds ~40 ms per response
    timeout = _IDLE_CONNECTION_SECONDS
    http_server: _HttpServer

    def setup(self) -> None:
        super().setup()
        self.http_server = self.server  # type: ignore[assignment]
        self.http_server.track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.http_server.track(self.connection, open_=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the stdlib access log; :meth:`_handle` logs each request."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        query_id = params.get("query_id") or str(uuid.uuid4())
        try:
            with self.http_server.request_scope():
                status = self._route(method, url.path, params, query_id)
        except WarehouseError as exc:
            status = self._send_error(exc, query_id)
        except Exception as exc:
            logger.exception("warehouse request %s failed", query_id)
            error = WarehouseError.new(STD_EXCEPTION, "STD_EXCEPTION", str(exc))
            status = self._send_error(error, query_id)
        logger.debug(
            "%s %s -> %s in %.1f ms (query_id=%s)",
            method,
            url.path,
            status,
            (time.monotonic() - started) * 1000,
            query_id,
        )

    def _route(
        self, method: str, path: str, params: dict[str, str], query_id: str
    ) -> int:
        body = self._read_body()
        bare_root = path == "/" and method == "GET" and "query" not in params
        if path == "/ping" or bare_root:
            # A bare GET / answers like /ping, as ClickHouse's server does.
            return self._send(200, b"Ok.\n", {"Content-Type": _TEXT_PLAIN})
        if path != "/":
            text = f"There is no handle {path}\n\nUse / or /ping for health checks.\n"
            return self._send(404, text.encode(), {"Content-Type": _TEXT_PLAIN})
        self._authenticate(params)
        header_database = self.headers.get("X-ClickHouse-Database")
        if header_database and "database" not in params:
            params["database"] = header_database
        if _truthy(params.get("compress")) or _truthy(params.get("decompress")):
            raise WarehouseError.new(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED",
                "ClickHouse's native compression (compress/decompress=1) is not "
                "supported; use Accept-Encoding/Content-Encoding",
            )
        body = decode_content(body, self.headers.get("Content-Encoding", ""))
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            params.update(parse_form(content_type, body))
            body = b""
        request = parse_request(params, body, method=method)
        result = self.http_server.warehouse.execute(request)
        return self._send_result(result, params, query_id)

    def _authenticate(self, params: Mapping[str, str]) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        creds = credentials_from(headers, params)
        address = str(self.client_address[0])
        if not self.http_server.authenticator(creds.user, creds.password, address):
            raise WarehouseError.new(
                AUTHENTICATION_FAILED,
                "AUTHENTICATION_FAILED",
                f"{creds.user}: Authentication failed: password is incorrect, "
                "or there is no user with such name",
            )

    def _read_body(self) -> bytes:
        """Read the whole request body (Content-Length or chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise WarehouseError.new(
                BAD_ARGUMENTS, "BAD_ARGUMENTS", f"Invalid Content-Length {length!r}"
            ) from None
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise WarehouseError.new(
                    CANNOT_PARSE_TEXT, "CANNOT_PARSE_TEXT", "Malformed chunked body"
                ) from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            out += self.rfile.read(size)
            self.rfile.readline(3)

    def _send_result(
        self, result: QueryResult, params: Mapping[str, str], query_id: str
    ) -> int:
        warehouse = self.http_server.warehouse
        headers = {
            "Content-Type": content_type_for(result.output_format),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": warehouse.timezone,
            "X-ClickHouse-Server-Display-Name": self.http_server.display_name,
            "X-ClickHouse-Summary": json.dumps(result.summary, separators=(",", ":")),
        }
        if result.output_format:
            headers["X-ClickHouse-Format"] = result.output_format
        body = result.body
        encoding = pick_encoding(self.headers.get("Accept-Encoding", ""))
        if body and encoding and _truthy(params.get("enable_http_compression")):
            body = compress(body, encoding)
            headers["Content-Encoding"] = encoding
        return self._send(200, body, headers)

    def _send_error(self, error: WarehouseError, query_id: str) -> int:
        version = self.http_server.warehouse.version
        body = f"{error.message} (version {version})\n".encode()
        headers = {
            "Content-Type": _TEXT_PLAIN,
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Exception-Code": str(error.code),
        }
        if error.status == 503:
            self.close_connection = True
        return self._send(error.status, body, headers)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str]) -> int:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", f"timeout={_KEEP_ALIVE_SECONDS}")
        self.end_headers()
        self.wfile.write(body)
        return status


# ---------------------------------------------------------------------------
# Public API


class WarehouseServer:
    """The warehouse HTTP server, run on a background thread.

    ``start()`` opens the chdb data path and begins serving; ``stop()`` lets
    in-flight requests finish, closes every connection and the engine. With
    ``port=0`` a free port is picked; read it from :attr:`port` after start.
    """

    def __init__(
        self,
        path: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        authenticator: Authenticator = allow_all,
        pool_size: int = 8,
    ) -> None:
        self.path = Path(path)
        self.host = host
        self._requested_port = port
        self._authenticator = authenticator
        self._pool_size = pool_size
        self._httpd: _HttpServer | None = None
        self._warehouse: Warehouse | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (the requested one until :meth:`start`)."""
        if self._httpd is None:
            return self._requested_port
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for clients, e.g. ``http://127.0.0.1:8123``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        """Open the engine, bind the socket and serve on a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("warehouse server already started")
        warehouse = Warehouse(self.path, pool_size=self._pool_size)
        try:
            httpd = _HttpServer(
                (self.host, self._requested_port), warehouse, self._authenticator
            )
        except BaseException:
            warehouse.close()
            raise
        self._warehouse, self._httpd = warehouse, httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, name="warehouse-http", daemon=True
        )
        self._thread.start()
        logger.info(
            "warehouse serving %s on %s (chdb %s)",
            self.path,
            self.url,
            warehouse.version,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, wait up to ``timeout`` s for requests, close chdb."""
        httpd, warehouse, thread = self._httpd, self._warehouse, self._thread
        if httpd is None or warehouse is None or thread is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.drain(timeout)
        thread.join(timeout)
        warehouse.close()
        self._httpd = self._warehouse = self._thread = None
        logger.info("warehouse stopped")

    def __enter__(self) -> WarehouseServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(
    path: Path,
    host: str = "127.0.0.1",
    port: int = 8123,
    *,
    ready: threading.Event | None = None,
) -> None:
    """Serve the warehouse at ``path`` until SIGTERM or SIGINT, then shut down.

    Signal handlers are installed only when called from the main thread;
    ``ready`` is set once the socket accepts connections.
    """
    server = WarehouseServer(path, host, port)
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    try:
        server.start()
        if ready is not None:
            ready.set()
        stop.wait()
    finally:
        server.stop()
        _restore_signal_handlers(previous)


_SignalHandler = Callable[[int, FrameType | None], Any] | int | None


def _install_signal_handlers(stop: threading.Event) -> dict[int, _SignalHandler]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("warehouse received signal %s, shutting down", signum)
        stop.set()

    return {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
    }


def _restore_signal_handlers(previous: Mapping[int, _SignalHandler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
