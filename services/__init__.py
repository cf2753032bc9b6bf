"""The online search service (gRPC): query -> segments -> proposals -> refiner -> moments.

Built by the search issue on top of :mod:`spr`; reads the catalog and the vector store,
never writes them.
"""
