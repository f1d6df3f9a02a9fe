"""Checkpoints hold data only, are written durably, and a damaged one never blocks a resume.

Each test here was seen to fail with the fix it proves taken out (see the commit messages).
"""

import os
from pathlib import Path

from resforce import fileio


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", str(b))), real_replace(a, b))[1])
    target = tmp_path / "sub" / "out.txt"
    fileio.write_text_atomic(target, "hello")
    kinds = [(e[0], Path(e[1]).name if e[0] == "rename" else e[1]) for e in events]
    assert kinds[0][0] == "fsync" and kinds[0][1].startswith(str(target.parent / ".out.txt."))
    assert kinds[1] == ("rename", "out.txt")
    assert kinds[2] == ("fsync", str(target.parent))
