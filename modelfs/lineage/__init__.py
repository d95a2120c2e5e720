"""Models, immutable versions and the edges between them."""

from modelfs.lineage.graph import LineageGraph
from modelfs.lineage.records import FileEntry, ModelInfo, Version

__all__ = ["FileEntry", "LineageGraph", "ModelInfo", "Version"]
