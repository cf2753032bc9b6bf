"""Catalog errors callers may want to catch by type."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class of the catalog's own errors."""


class CatalogUnavailable(CatalogError, ConnectionError):
    """The catalog database cannot be reached or opened; the message says what to check."""


class VideoNotFound(CatalogError, LookupError):
    """No video row has the given id."""


class RunNotFound(CatalogError, LookupError):
    """No ingest run has the given id."""
