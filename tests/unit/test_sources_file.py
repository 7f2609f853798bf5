"""FileSource: inotify on the file and its directory (no root needed)."""
from __future__ import annotations

import os
import threading

import pytest

from agent.errors import InvalidInput
from agent.sources import open_source
from agent.sources.file import FileSource, revision_of

DOC = "host: hv-01\nsecurity_groups: []\ninstances: []\n"


@pytest.fixture
def watched(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(DOC)
    src = FileSource(path)
    seen = threading.Event()
    src.start(seen.set)
    yield path, src, seen
    src.close()


def test_fetch_returns_document_and_content_revision(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(DOC)
    data, rev = open_source(str(path)).fetch()
    assert data["host"] == "hv-01" and rev == revision_of(DOC.encode())
    assert open_source(f"file://{path}").fetch()[1] == rev


def test_malformed_and_missing_files_are_invalid_input_with_the_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: [\n")
    with pytest.raises(InvalidInput) as exc:
        FileSource(path).fetch()
    assert str(path) in str(exc.value.errors[0]) and exc.value.revision
    with pytest.raises(InvalidInput, match="no such file"):
        FileSource(tmp_path / "absent.yaml").fetch()


def test_write_in_place_is_seen(watched):
    path, _src, seen = watched
    path.write_text(DOC + "# edit\n")
    assert seen.wait(3)


def test_atomic_rename_is_seen_and_followed(watched):
    path, src, seen = watched
    for i in range(2):                   # the second time, the new inode must be watched too
        seen.clear()
        tmp = path.with_name(f".config.yaml.{i}")
        tmp.write_text(DOC + f"# v{i}\n")
        os.rename(tmp, path)
        assert seen.wait(3)
        assert src.fetch()[0]["host"] == "hv-01"


def test_delete_and_recreate_are_seen(watched):
    path, _src, seen = watched
    path.unlink()
    assert seen.wait(3)
    seen.clear()
    path.write_text(DOC)
    assert seen.wait(3)


def test_other_files_in_the_directory_are_ignored(watched):
    path, _src, seen = watched
    (path.parent / "unrelated.txt").write_text("x")
    assert not seen.wait(0.5)
