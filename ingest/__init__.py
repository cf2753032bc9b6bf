"""The ingest stage (``spr.ingest``): videos -> 1 fps CLIP features -> segment embeddings.

The only stage that writes the catalog, the vector store and the frame-feature store. It imports
only the core (:mod:`spr` minus the stages); the command line (:mod:`spr.cli`) wires it up.
"""
