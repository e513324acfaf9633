"""Shared recipe of the Table 1 cell configs (configs/c{C}_m{T}.py): not a config itself.

A cell config is the recipe of configs/default.py (model, Adam lr 1e-4, batch 256, 100,000
steps, K = 4) trained on episodes composed like Table 1 cell (C, T) -- c ~ U(1..min(C, T))
classes in a memory of T images, the target's class among them -- and evaluated on that cell.
"""

from configs import default


def get_cell_config(max_classes: int, memory_size: int):
  """The recipe, trained, validated and evaluated on cell (C = max_classes, T = memory_size)."""
  config = default.get_config()
  config.episodes.composition = "cell"
  config.episodes.max_classes = max_classes
  config.episodes.memory_size = memory_size
  config.validation.max_classes = max_classes
  config.validation.memory_size = memory_size
  config.eval.cells = f"{max_classes}:{memory_size}"
  return config
