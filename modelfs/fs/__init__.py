"""The FUSE mount: every version of every model as an ordinary checkpoint directory.

Heads are writable (snapshot-on-write): files saved into ``<mnt>/<model>/`` become its next
version. Everything but the adapter is synchronous and free of pyfuse3 and trio:

- ``nodes`` (typed node keys, attributes), ``inodes`` (the inode table), ``tree`` (names,
  attributes, xattrs, heads loaded from the store), ``kinds`` and ``views`` (one handler
  per kind of node), ``heads`` (a writable head's namespace), ``headwrites`` (namespace
  changes and the store operations they imply);
- ``staged`` (a file being written), ``staging`` (the staging area), ``draftsync`` (the
  draft in the store follows the mount), ``settle`` (when a burst commits), ``readahead``;
- ``core`` (``MountCore``: handles, the life of a written file, every decision) and
  ``config`` (``MountConfig``, each setting declared once).

``ops`` (handlers that await the core) with ``boundary`` (the one exception boundary) and
``daemon`` are the pyfuse3 + trio adapter; ``control`` starts and stops daemons for the
CLI. Importing this package imports neither pyfuse3 nor trio.
"""
