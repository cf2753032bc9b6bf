"""The refine stage (``spr.refine``): the SPR_CLIP refiner in this process
(:class:`~spr.refine.inprocess.InProcessRefiner`, a :class:`spr.refinement.Refiner` over the
feature store and the dynamic batcher) and its gRPC service, a thin adapter over it.

The model itself is core (:mod:`spr.models.refiner`), shared with the train stage. Reads
per-second features from the frame-feature store, never decodes video.
"""
