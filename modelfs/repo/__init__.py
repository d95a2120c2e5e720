"""The repository facade: the only API front ends (cli, fs, ops, remote) use.

Everything another layer needs is named here, so none of them imports a module inside
``modelfs.repo`` (whose layout may change) or reaches through the facade's attributes.
"""

from modelfs.lineage import FileEntry, ModelInfo, Version
from modelfs.repo.access import Access, make_dir, open_private, set_file_mode, store_access
from modelfs.repo.chunks import ChunkRecord, Counters
from modelfs.repo.chunksource import (
    LAZY_REMOTE_KEY,
    ChunkSource,
    SourceCounters,
    StoreChunkSource,
    copy_metadata,
)
from modelfs.repo.drafts import STAGING_LOCK, Draft, Drafts, staging_owner_alive
from modelfs.repo.files import FileReader, FileRecord, StoredInline, StoredPart, StoredTensor
from modelfs.repo.importer import ChunkHints, Progress, StoreSettings, mapped
from modelfs.repo.lossy import CHANGE_LIMIT, LossyPlan, TensorFigures
from modelfs.repo.maintenance import FsckReport, Maintenance
from modelfs.repo.parents import Inference
from modelfs.repo.repo import Repo
from modelfs.repo.sources import source_files
from modelfs.repo.tables import RecordTable
from modelfs.repo.transfer import Transfer, file_record_chunks

__all__ = ["CHANGE_LIMIT", "LAZY_REMOTE_KEY", "LossyPlan", "TensorFigures", "STAGING_LOCK", "Access", "ChunkHints", "ChunkRecord", "ChunkSource", "Counters", "Draft", "Drafts",
           "FileEntry", "FileReader", "FileRecord", "FsckReport", "Inference", "Maintenance", "ModelInfo", "Progress",
           "RecordTable", "Repo", "SourceCounters", "StoreChunkSource", "StoreSettings", "StoredInline", "StoredPart", "StoredTensor", "Transfer", "Version",
           "copy_metadata", "make_dir", "mapped", "open_private", "set_file_mode", "file_record_chunks", "source_files", "staging_owner_alive",
           "store_access"]
