"""Shared fixtures: catalog databases (SQLite always, PostgreSQL when reachable; in CI it must
be), the session's real Milvus server, vector stores opened through the backend registry, and a
runner for the ``spr`` command line."""

from __future__ import annotations

import contextlib

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@contextlib.contextmanager
def _fresh_schema(postgres_server_url: URL) -> Iterator[str]:
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


@pytest.fixture
def postgres_url(postgres_server_url: URL) -> Iterator[str]:
    """A URL onto a fresh, empty schema of the test server, dropped after the test.

    The schema is first on the connection's ``search_path``, so every unqualified table —
    Alembic's ``alembic_version`` included — is created in it."""
    with _fresh_schema(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="module")
def postgres_url_module(postgres_server_url: URL) -> Iterator[str]:
    """:func:`postgres_url` shared by the tests of one module (a corpus built once)."""
    with _fresh_schema(postgres_server_url) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A URL onto an empty catalog database, once per backend: a SQLite file under
    ``tmp_path`` and a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog' / 'catalog.db'}"
    return request.getfixturevalue("postgres_url")


def run_spr(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the ``spr`` command line in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "spr.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def milvus_server_dir(tmp_path_factory) -> Iterator[Path | None]:
    """The data directory of the Milvus standalone server the session started with
    ``spr milvus start`` (None when ``$SPR_TEST_MILVUS_URI`` names a running server instead).

    The server is a hard dependency of the suite: failing to start it fails, never skips."""
    if os.environ.get("SPR_TEST_MILVUS_URI"):
        yield None
        return
    data_dir = tmp_path_factory.mktemp("milvus")
    started = run_spr("milvus", "start", "--dir", str(data_dir), "--port", "0")
    if started.returncode != 0:
        pytest.fail(f"`spr milvus start` failed: {started.stderr.strip() or started.stdout.strip()}", pytrace=False)
    try:
        yield data_dir
    finally:
        run_spr("milvus", "stop", "--dir", str(data_dir))


@pytest.fixture(scope="session")
def milvus_uri(milvus_server_dir: Path | None) -> str:
    """The URI of a real Milvus server: the session's own, or ``$SPR_TEST_MILVUS_URI``."""
    if milvus_server_dir is None:
        return os.environ["SPR_TEST_MILVUS_URI"]
    from spr.stores.milvus_server import EmbeddedMilvus

    state = EmbeddedMilvus(milvus_server_dir).status()
    assert state is not None, "the session's Milvus server is gone"
    return state.uri


def store_config(backend: str, faiss_dir: Path, milvus_uri: str = "", **faiss: Any):
    """The configuration tests open a ``backend`` store with: Faiss under ``faiss_dir`` (``faiss``:
    ``[faiss]`` overrides such as ``train_points_per_list``), Milvus at ``milvus_uri`` with
    Strong consistency, so that a search sees what the test just wrote."""
    from spr.config import Config, ConsistencyLevel, FaissConfig, MilvusConfig, VectorBackend, VectorsConfig

    return Config(
        vectors=VectorsConfig(backend=VectorBackend(backend)),
        faiss=FaissConfig(dir=str(faiss_dir), **faiss),
        milvus=MilvusConfig(uri=milvus_uri, consistency_level=ConsistencyLevel.STRONG),
    )


@pytest.fixture
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``open_store(backend, **faiss_settings)``: a vector store opened through the registry
    (:func:`spr.stores.open_vector_store`) on :func:`store_config`; Milvus is the session's
    server. Every store it opened is closed after the test."""
    from spr.stores import open_vector_store

    opened = []

    def open_(backend: str, **faiss: Any):
        uri = request.getfixturevalue("milvus_uri") if backend == "milvus" else ""
        store = open_vector_store(store_config(backend, tmp_path / "faiss", uri, **faiss))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key (PEM) made with the openssl command (the
    `cryptography` package is not a dependency). Without openssl the test skips, except in CI,
    where the TLS paths of the gRPC services must run."""
    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make a test certificate (apt-get install openssl)"
        if _in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
