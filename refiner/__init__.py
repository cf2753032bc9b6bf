"""The refine stage (``spr.refine``): the SPR_CLIP refiner's dynamic batcher and gRPC service.

The model itself is core (:mod:`spr.models.refiner`), shared with the train stage. Reads
per-second features from the frame-feature store, never decodes video.
"""
