"""What errno the mount answers when a store write fails: the typed error's, never a guess."""

from __future__ import annotations

import errno

import pytest

from modelfs.errors import ModelfsError, StoreFull, StoreIOError, StoreReadOnly
from modelfs.fs.boundary import store_errno


@pytest.mark.parametrize(("e", "code"), [
    (StoreFull("the disk holding store /s is full"), errno.ENOSPC),
    (StoreReadOnly("store /s is read-only"), errno.EROFS),
    (StoreIOError("cannot write store /mnt/full-disks/s (I/O error)", errno.EIO), errno.EIO),
    (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC),
    (ModelfsError("a full model is not a full disk"), errno.EIO),
    (RuntimeError("no space for this in the plan"), errno.EIO),
])
def test_store_errno_comes_from_the_error_type_not_its_words(e: BaseException, code: int) -> None:
    assert store_errno(e) == code
