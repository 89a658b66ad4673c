"""Words of the synthetic `shapes` world, shared by the builder, objectives and evaluators.

Canonical names are what the dataset stores (labels, VQA answers); the synonym tables
map every word a caption may use (paraphrases, plurals) back to a canonical index.
"""
SHAPE_NAMES = ("circle", "square", "triangle", "diamond", "star")
COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple")
SIZE_NAMES = ("small", "large")
# 3x3 grid cells in row-major order: index = 3 * row + column.
PLACE_NAMES = (
    "top left", "top center", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom center", "bottom right",
)
GRID_SIZE = 3
MAX_OBJECTS = 4

COLOUR_RGB = {
    "red": (215, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (238, 222, 40),
    "green": (40, 165, 60),
    "blue": (35, 80, 225),
    "purple": (135, 45, 185),
}

# Words a caption may use for each canonical name (first entry: the canonical name); single words only.
SHAPE_WORDS = {
    "circle": ("circle", "disc", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "star": ("star",),
}
COLOUR_WORDS = {
    "red": ("red",),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
}
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def plural(noun: str) -> str:
  """English plural of a shape word ("box" -> "boxes")."""
  return noun + "es" if noun.endswith(("x", "s")) else noun + "s"

# Canonical spatial relations between two objects on the grid.
RELATION_NAMES = ("left of", "right of", "above", "below")
RELATION_WORDS = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
