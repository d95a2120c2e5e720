"""The allocator tuning the daemon and the CLI apply (modelfs/heap.py)."""

from __future__ import annotations

import subprocess
import sys


def test_keep_freed_memory_takes_on_glibc_and_decoding_still_works() -> None:
    # in a child: the setting is process-wide and must not leak into the test process
    code = ("from modelfs.heap import keep_freed_memory\n"
            "assert keep_freed_memory() is True\n"
            "from modelfs.codecs.planes import encode_planes, decode_planes\n"
            "data = bytes(range(256)) * 16384\n"
            "for _ in range(50):\n"
            "    assert decode_planes(memoryview(encode_planes(data, 4)), len(data)) == data\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
