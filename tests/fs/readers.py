"""Reader processes for the mount tests (run as scripts, so each is its own process).

    python readers.py hash PATH...         print the blake3 of each file
    python readers.py pause PATH NBYTES    read NBYTES, print "ready", wait for a line on
                                           stdin, read the rest, print the file's blake3
    python readers.py loop STOP PATH...    print "start", then read the files over and over
                                           (dropping their pages each pass) until STOP exists
    python readers.py write DIR TAG N KIB  write N files of KIB KiB as a saver does (to a
                                           temporary name, then renamed), printing
                                           "<name> <blake3>" for each
"""

from __future__ import annotations

import contextlib
import os
import sys

import blake3

PIECE = 1 << 20


def hash_file(path: str) -> str:
    h = blake3.blake3()
    with open(path, "rb") as f:
        while data := f.read(PIECE):
            h.update(data)
    return h.hexdigest()


def pause(path: str, first: int) -> int:
    h = blake3.blake3()
    f = open(path, "rb")  # noqa: SIM115 (closing may fail too once the daemon is gone)
    h.update(f.read(first))
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        while data := f.read(PIECE):
            h.update(data)
    except OSError as e:
        print(f"error {e.errno}", flush=True)
        with contextlib.suppress(OSError):
            f.close()
        return 3
    f.close()
    print(h.hexdigest(), flush=True)
    return 0


def loop(stop: str, paths: list[str]) -> int:
    print("start", flush=True)
    passes = 0
    while not os.path.exists(stop):
        for p in paths:
            with open(p, "rb") as f:
                while f.read(PIECE):
                    if os.path.exists(stop):
                        break
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        passes += 1
    print(f"passes {passes}", flush=True)
    return 0


def write(d: str, tag: str, n: int, kib: int) -> int:
    for i in range(n):
        data = (tag.encode() + i.to_bytes(4, "little")) * (kib * 1024 // (len(tag) + 4))
        tmp = os.path.join(d, f".tmp-{tag}-{i}")
        with open(tmp, "wb") as f:
            for off in range(0, len(data), PIECE):
                f.write(data[off:off + PIECE])
        os.rename(tmp, os.path.join(d, f"{tag}-{i}.bin"))
        print(f"{tag}-{i}.bin {blake3.blake3(data).hexdigest()}", flush=True)
    return 0


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    if cmd == "hash":
        for p in args:
            print(hash_file(p), flush=True)
        return 0
    if cmd == "pause":
        return pause(args[0], int(args[1]))
    if cmd == "loop":
        return loop(args[0], args[1:])
    if cmd == "write":
        return write(args[0], args[1], int(args[2]), int(args[3]))
    raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
