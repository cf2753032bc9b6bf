"""The models: CLIP towers (:mod:`.clip`), projectors (:mod:`.projector`), the SPR_CLIP refiner
(:mod:`.refiner`), their named JSON configs (:mod:`.registry`) and checkpoints (:mod:`.checkpoints`).

Only the torch-free registry is imported here, so ``import spr.models`` stays cheap::

    list_model_configs("refiner")            # ['refiner-spr-tiny', 'refiner-vit-l-14']
    model_config("refiner-vit-l-14")         # RefinerShape(in_dim=768, ...)
    build_refiner("refiner-spr-tiny")        # spr.models.refiner: a shape or a name
"""

from .registry import (
    ProjectorShape,
    RefinerShape,
    add_model_config,
    list_model_configs,
    model_config,
)

__all__ = ["ProjectorShape", "RefinerShape", "add_model_config", "list_model_configs", "model_config"]
