"""The search stage (``spr.search``): the gRPC search service and its client.

The service is a thin adapter over the core's search engine (:class:`spr.engine.MomentSearch`),
which reads the catalog and the vector store, never writes them. It imports only the core; the
command line (:mod:`spr.cli`) starts it beside a refiner.
"""
