"""Creating the catalog's SQLAlchemy engine, with per-dialect connection setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from .errors import CatalogUnavailable


def masked_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``, safe for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even parseable: show nothing secret-looking
        return "<unparseable catalog URL>"


def create_catalog_engine(url: str | URL, echo: bool = False, isolation_level: str | None = None) -> Engine:
    """An engine for ``url``. SQLite gets its parent directory created, foreign keys on,
    WAL journaling and real (transactional) BEGINs; PostgreSQL a bounded connect timeout."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if isolation_level is not None:
        kwargs["isolation_level"] = isolation_level
    if parsed.get_backend_name() == "sqlite":
        _make_sqlite_parent(parsed)
    elif parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() == "psycopg2":
        if "connect_timeout" not in parsed.query:
            # libpq waits forever on a black-holed host by default.
            kwargs["connect_args"] = {"connect_timeout": 10}
    engine = create_engine(parsed, **kwargs)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine)
    return engine


def check_connection(engine: Engine) -> None:
    """Open one connection or raise :class:`CatalogUnavailable` naming the URL and what to check."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        raise CatalogUnavailable(_unavailable_message(engine.url, exc)) from exc


def _unavailable_message(url: URL, exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    detail = " ".join(str(cause).split())  # drivers put newlines in their messages
    shown = masked_url(url)
    if url.get_backend_name() == "sqlite":
        hint = (
            "check that the database file's directory exists and is writable, and that no other "
            "program holds the file locked (catalog.url / SPR_CATALOG__URL, or SPR_DATA_DIR)"
        )
    else:
        hint = (
            f"check that the database server is running and accepts connections at "
            f"{url.host or 'localhost'}:{url.port or 'default port'}, that database "
            f"{url.database!r} exists, and that the user and password in catalog.url "
            f"(SPR_CATALOG__URL) are right"
        )
    return f"cannot open the catalog database {shown}: {type(cause).__name__}: {detail}; {hint}"


def _make_sqlite_parent(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:") or url.query.get("uri"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Python's sqlite3 only BEGINs before DML, so DDL (migrations) would run outside
        # the transaction; take over: no implicit transactions, BEGIN emitted below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # Off by default in SQLite: without it ON DELETE CASCADE does nothing.
            cursor.execute("PRAGMA foreign_keys=ON")
            # Readers (search) never block on the writer (ingest) and vice versa.
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")
