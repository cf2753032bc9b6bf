"""Shared fixtures: databases for the catalog (SQLite always, PostgreSQL when reachable)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError

DEFAULT_POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


@pytest.fixture(scope="session")
def postgres_server_url() -> URL:
    """The PostgreSQL server under test (``$SPR_TEST_POSTGRES_URL``), checked once per session.

    Skips when it is unreachable, except in CI (``CI=true``), where a missing server fails."""
    url = make_url(os.environ.get("SPR_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    engine = create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        message = (
            f"PostgreSQL is not reachable at {url.render_as_string(hide_password=True)} "
            f"({' '.join(str(exc.orig).split())}). Start one (e.g. `docker run -d -p 5432:5432 "
            f"-e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test postgres:15`) or point "
            f"SPR_TEST_POSTGRES_URL at a running server."
        )
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_server_url: URL) -> Iterator[str]:
    """A URL onto a fresh, empty schema of the test server, dropped after the test.

    The schema is first on the connection's ``search_path``, so every unqualified table —
    Alembic's ``alembic_version`` included — is created in it."""
    schema = f"spr_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    options = postgres_server_url.query.get("options")
    search_path = f"-csearch_path={schema}"
    url = postgres_server_url.update_query_dict(
        {"options": f"{options} {search_path}" if options else search_path}
    )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # Fail fast instead of hanging if a test leaked a connection holding locks.
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A URL onto an empty catalog database, once per backend: a SQLite file under
    ``tmp_path`` and a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog' / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> Iterator[str]:
    """A real Milvus standalone server (the `milvus` package), started once per session.

    ``$SPR_TEST_MILVUS_URI`` points the tests at an already running server instead. The
    server is a hard dependency of the suite: failing to start it fails, never skips."""
    external = os.environ.get("SPR_TEST_MILVUS_URI")
    if external:
        yield external
        return
    from spr.stores.milvus_server import EmbeddedMilvus, MilvusServerError

    server = EmbeddedMilvus(tmp_path_factory.mktemp("milvus"), port=0)
    try:
        state = server.start(timeout_s=180)
    except MilvusServerError as exc:
        pytest.fail(f"could not start the embedded Milvus server: {exc}", pytrace=False)
    try:
        yield state.uri
    finally:
        server.stop()
