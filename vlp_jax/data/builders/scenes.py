"""Procedural scenes for the `shapes` dataset: sampling objects on a 3x3 grid and drawing them.

Every object sits inside its own grid cell, so objects never overlap and each has one
well-defined place. Geometry is in normalised image coordinates; the drawn pixels fill
exactly the object's box, so boxes can be checked against pixels.
"""
import dataclasses
import io

import numpy as np
from PIL import Image, ImageDraw

from vlp_jax.data.builders.vocabulary import (COLOUR_NAMES, COLOUR_RGB, GRID_SIZE, MAX_OBJECTS, PLACE_NAMES,
                                              SHAPE_NAMES, SIZE_NAMES)

# Probability of 1, 2, 3, 4 objects: multi-object scenes dominate so descriptions rarely collide.
OBJECT_COUNT_PROBABILITIES = (0.1, 0.2, 0.3, 0.4)
# Object extent as a fraction of a grid cell, per size.
EXTENT_IN_CELLS = {"small": 0.42, "large": 0.8}
_MARGIN = 0.01  # normalised gap kept between an object and its cell border
_SUPERSAMPLING = 2  # draw at 2x and downsample for smooth edges


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One drawn object; `bbox` is (ymin, xmin, ymax, xmax) normalised to [0, 1]."""
  shape: int
  colour: int
  size: int
  cell: int
  bbox: tuple[float, float, float, float]

  @property
  def row(self) -> int:
    return self.cell // GRID_SIZE

  @property
  def column(self) -> int:
    return self.cell % GRID_SIZE

  @property
  def shape_name(self) -> str:
    return SHAPE_NAMES[self.shape]

  @property
  def colour_name(self) -> str:
    return COLOUR_NAMES[self.colour]

  @property
  def size_name(self) -> str:
    return SIZE_NAMES[self.size]

  @property
  def place_name(self) -> str:
    return PLACE_NAMES[self.cell]


def sample_scene(rng: np.random.Generator) -> list[SceneObject]:
  """Samples 1-4 objects in distinct grid cells, in reading order (row-major)."""
  count = 1 + int(rng.choice(MAX_OBJECTS, p=OBJECT_COUNT_PROBABILITIES))
  cells = np.sort(rng.choice(GRID_SIZE * GRID_SIZE, size=count, replace=False))
  return [_sample_object(rng, int(cell)) for cell in cells]


def _sample_object(rng: np.random.Generator, cell: int) -> SceneObject:
  size = int(rng.integers(len(SIZE_NAMES)))
  extent = EXTENT_IN_CELLS[SIZE_NAMES[size]] / GRID_SIZE
  row, column = divmod(cell, GRID_SIZE)
  centre_y = _sample_centre(rng, row, extent)
  centre_x = _sample_centre(rng, column, extent)
  half = extent / 2
  return SceneObject(
      shape=int(rng.integers(len(SHAPE_NAMES))),
      colour=int(rng.integers(len(COLOUR_NAMES))),
      size=size,
      cell=cell,
      bbox=(centre_y - half, centre_x - half, centre_y + half, centre_x + half),
  )


def _sample_centre(rng: np.random.Generator, index: int, extent: float) -> float:
  low = index / GRID_SIZE + extent / 2 + _MARGIN
  high = (index + 1) / GRID_SIZE - extent / 2 - _MARGIN
  return float(rng.uniform(low, high))


def draw_scene(objects: list[SceneObject], image_size: int, rng: np.random.Generator) -> np.ndarray:
  """Draws the objects on a noisy grey background. Returns uint8 [image_size, image_size, 3]."""
  canvas_size = image_size * _SUPERSAMPLING
  grey = int(rng.integers(70, 160))
  canvas = Image.new("RGB", (canvas_size, canvas_size), (grey, grey, grey))
  draw = ImageDraw.Draw(canvas)
  for obj in objects:
    _draw_object(draw, obj, canvas_size)
  pixels = np.asarray(canvas.reduce(_SUPERSAMPLING), dtype=np.int16)
  noise = rng.integers(-6, 7, size=pixels.shape, dtype=np.int16)
  return np.clip(pixels + noise, 0, 255).astype(np.uint8)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, canvas_size: int) -> None:
  ymin, xmin, ymax, xmax = (value * canvas_size for value in obj.bbox)
  # PIL fills the closed pixel range [x0, x1]; stop one pixel short so the fill stays inside the box.
  box = (xmin, ymin, xmax - 1, ymax - 1)
  fill = COLOUR_RGB[obj.colour_name]
  if obj.shape_name == "circle":
    draw.ellipse(box, fill=fill)
  elif obj.shape_name == "square":
    draw.rectangle(box, fill=fill)
  else:
    draw.polygon(_unit_polygon(obj.shape_name, box), fill=fill)


def _unit_polygon(shape_name: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
  """Vertices of a shape filling `box` = (x0, y0, x1, y1) exactly."""
  x0, y0, x1, y1 = box
  if shape_name == "triangle":
    unit = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
  elif shape_name == "diamond":
    unit = [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
  elif shape_name == "star":
    unit = _unit_star()
  else:
    raise ValueError(f"no polygon for shape {shape_name!r}")
  return [(x0 + u * (x1 - x0), y0 + v * (y1 - y0)) for u, v in unit]


def _unit_star(points: int = 5, inner_ratio: float = 0.45) -> list[tuple[float, float]]:
  angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
  radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
  xs, ys = radii * np.cos(angles), -radii * np.sin(angles)
  xs = (xs - xs.min()) / (xs.max() - xs.min())
  ys = (ys - ys.min()) / (ys.max() - ys.min())
  return list(zip(xs.tolist(), ys.tolist()))


def encode_jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
  """JPEG bytes of a uint8 [H, W, 3] image."""
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  return buffer.getvalue()
