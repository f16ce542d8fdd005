"""The mitigation map (``deltaguard map``): where compressing a fine-tune's delta keeps the aligned base's
safety, over alignment depth × attack strength × compression, per threat and model family."""

from deltaguard.mitigation.config import MapConfig, map_profile
from deltaguard.mitigation.norms import DeltaNorms, delta_norms
from deltaguard.mitigation.run import expand, run_map
from deltaguard.mitigation.summary import render_map

__all__ = ["DeltaNorms", "MapConfig", "delta_norms", "expand", "map_profile", "render_map", "run_map"]
