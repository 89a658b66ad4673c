"""TFDS builders (`shapes`, `coco_format`), registered on import, and the `shapes` vocabulary and scorers."""
from vlp_jax.data.builders.coco_format import CocoFormat, CocoFormatConfig, coco_format_config
from vlp_jax.data.builders.collisions import collision_fraction, description_collision_fraction
from vlp_jax.data.builders.object_recall import batch_object_recall, object_recall
from vlp_jax.data.builders.shapes import Shapes, ShapesConfig, shapes_config
from vlp_jax.data.builders.vocabulary import (COLOUR_NAMES, GRID_SIZE, MAX_OBJECTS, PLACE_NAMES, RELATION_NAMES,
                                              SHAPE_NAMES, SIZE_NAMES)

__all__ = [
    "CocoFormat", "CocoFormatConfig", "coco_format_config", "Shapes", "ShapesConfig", "shapes_config",
    "batch_object_recall", "object_recall", "collision_fraction", "description_collision_fraction",
    "COLOUR_NAMES", "GRID_SIZE", "MAX_OBJECTS", "PLACE_NAMES", "RELATION_NAMES", "SHAPE_NAMES", "SIZE_NAMES",
]
