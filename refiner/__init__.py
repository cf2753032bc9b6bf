"""The refinement and re-ranking model and its gRPC service (SPR_CLIP).

Built by the search issue on top of :mod:`spr`; reads per-second features from the
frame-feature store, never decodes video.
"""
