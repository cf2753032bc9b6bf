"""The offline ingest pipeline: videos -> 1 fps CLIP features -> segment embeddings.

Built by the ingest issue on top of :mod:`spr`; the only stage that writes the catalog,
the vector store and the frame-feature store.
"""
