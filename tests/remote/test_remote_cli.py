"""The verbs as a user runs them (a real `modelfs` process, a real S3 server): remote add/list/rm,
push, clone --lazy, fetch, pull and gc --remote with --json summaries; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

from modelfs.remote import Remote
from modelfs.remote.push import push
from modelfs.repo import Repo
from tests.conftest import dir_blake3


def test_push_lazy_clone_fetch_pull_and_gc_through_the_cli(s3_server, tmp_path: Path, make_lineage,  # type: ignore[no-untyped-def]
                                                           cli) -> None:
    env = s3_server.env()
    bucket = s3_server.make_bucket()
    base, (ft,) = make_lineage(n_tensors=2, elems=1 << 15, children=1)
    a, lazy = tmp_path / "a", tmp_path / "lazy"
    with Repo.init(a) as repo:
        repo.import_dir(base, "m")

    bad = cli("remote", "add", "x", "ftp://host/p", store=a)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "Error: unknown remote URL scheme 'ftp': use file or s3 URLs"]
    assert cli("remote", "add", "origin", f"s3://{bucket}/lineage", store=a).returncode == 0

    pushed = json.loads(cli("push", "--json", store=a, env=env).stdout)
    assert pushed["versions"] == 1 and pushed["refs_moved"] == ["m"] and pushed["bytes_up"] > 0

    r = cli("clone", "--lazy", "--json", f"s3://{bucket}/lineage", lazy, env=env)
    cloned = json.loads(r.stdout)
    assert cloned["lazy"] and cloned["chunks"] == 0 and cloned["bytes_down"] < pushed["bytes_up"] / 20

    with Repo.open(a) as repo:
        repo.import_dir(ft, "m")
        push(repo, Remote.of(repo, "origin", s3_server.options()), ["m"])
    pulled = json.loads(cli("pull", "--json", store=lazy, env=env).stdout)
    assert pulled["versions"] == 1 and pulled["chunks"] == 0  # a lazy store takes the metadata only
    fetched = json.loads(cli("fetch", "--json", "m@2", store=lazy, env=env).stdout)
    assert fetched["chunks"] > 0 and fetched["version"] == "m@2"
    with Repo.open(lazy) as repo:
        repo.export("m@2", tmp_path / "x")
    assert dir_blake3(tmp_path / "x") == dir_blake3(ft)

    gc = json.loads(cli("gc", "--remote", "origin", "--grace", "0", "--json", store=a, env=env).stdout)
    assert gc["deleted"] == 0 and gc["packs_kept"] >= 3
    refused = cli("remote", "rm", "origin", store=lazy)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert "fetch them first" in refused.stderr
    assert f"origin\ts3://{bucket}/lineage\t" in cli("remote", "list", store=lazy).stdout
