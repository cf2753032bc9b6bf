"""The online search service (gRPC): query -> segments -> proposals -> refiner -> moments.

Built by the search issue on top of :mod:`spr`; reads the catalog and the vector store,
never writes them. The command-line compositions here are the one place stages meet:
``spr serve`` starts the refiner beside the search service, and ``spr demo`` runs ingest,
both services and the client on one machine.
"""
