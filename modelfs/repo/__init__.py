"""The repository facade: the only API front ends (cli, fs, ops, remote) use."""

from modelfs.lineage import FileEntry, ModelInfo, Version
from modelfs.repo.chunks import Counters
from modelfs.repo.drafts import Draft
from modelfs.repo.files import FileReader
from modelfs.repo.importer import StoreSettings
from modelfs.repo.repo import Repo

__all__ = ["Counters", "Draft", "FileEntry", "FileReader", "ModelInfo", "Repo", "StoreSettings", "Version"]
