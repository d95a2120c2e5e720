"""The FUSE mount: every version of every model as an ordinary checkpoint directory.

``tree`` (names, inodes, attributes) and ``readahead`` are synchronous and free of pyfuse3;
``ops`` and ``daemon`` are the pyfuse3 + trio adapter; ``control`` starts and stops daemons
for the CLI. Importing this package imports neither pyfuse3 nor trio.
"""
