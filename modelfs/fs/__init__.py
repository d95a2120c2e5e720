"""The FUSE mount: every version of every model as an ordinary checkpoint directory.

Heads are writable (snapshot-on-write): files saved into ``<mnt>/<model>/`` become its next
version. ``tree`` (names, inodes, attributes), ``heads`` (a writable head's namespace),
``staged``/``staging`` (staging files), ``draftsync`` (the draft in the store follows the
mount), ``settle`` (when a burst commits) and ``readahead`` are
synchronous and free of pyfuse3; ``ops`` and ``daemon`` are the pyfuse3 + trio adapter;
``control`` starts and stops daemons for the CLI. Importing this package imports neither
pyfuse3 nor trio.
"""
