"""`resforce prepare` at scale, on the CPU with tiny random Wan parts (tests/support/latent_fixtures.py):
2 Gloo ranks under torchrun share the videos and write exactly what one process writes; reader
threads write what the serial path writes; the reader queue is bounded; a bad video is skipped
and named, a failing read is an `error:` naming the file; the VAE's dtype; the throughput line.
"""

from __future__ import annotations

import filecmp
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]


def options(parts, out, **kw):
    from resforce.worlds.latents.prepare import PrepareOptions

    base = dict(chunks=3, size=(32, 32), batch=2, clips_per_video=0, dtype="float32", workers=0)
    return PrepareOptions(str(parts / "videos"), str(parts / "vae"), str(parts / "wan"), str(out), **{**base, **kw})


def same_dataset(a: Path, b: Path) -> None:
    """The same files, byte for byte, and the same index."""
    files = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(a) == files(b)
    for name in files(a):
        if name != "index.json":
            assert filecmp.cmp(a / name, b / name, shallow=False), name
    assert json.loads((a / "index.json").read_text()) == json.loads((b / "index.json").read_text())


# ----------------------------------------------------------------------------- ranks
def _driver(parts: str, out: str, log: str) -> None:
    """Run by torchrun: every rank prepares, records the videos it wrote and what it returned."""
    from resforce.worlds.latents.prepare import run_prepare

    wrote = []
    index, throughput = run_prepare(options(Path(parts), out, workers=2), after_video=wrote.append, progress=False)
    rank = int(os.environ["RANK"])
    threads = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
    Path(log, f"rank{rank}.json").write_text(json.dumps({"wrote": wrote, "index": index, "threads": threads,
                                                         "clips": throughput.clips, "ranks": throughput.ranks}))


@pytest.mark.xdist_group("processes")  # torchrun launches share one test worker
def test_two_ranks_split_the_videos_and_write_what_one_process_writes(parts, tmp_path):
    from resforce.worlds.latents.prepare import prepare

    from torchrun_launch import run_torchrun

    (tmp_path / "log").mkdir()
    p = run_torchrun(__file__, parts, tmp_path / "two", tmp_path / "log")
    assert "2 rank(s)" in p.stdout and p.stdout.count("encoded 6 clip(s)") == 1  # rank 0 reports the sum

    prepare(options(parts, tmp_path / "one"), progress=False)
    same_dataset(tmp_path / "one", tmp_path / "two")

    ranks = [json.loads((tmp_path / "log" / f"rank{r}.json").read_text()) for r in range(2)]
    everything = sorted(p.relative_to(parts / "videos").as_posix() for p in (parts / "videos").rglob("*.mp4"))
    assert [sorted(r["wrote"]) for r in ranks] == [everything[0::2], everything[1::2]]  # disjoint, by position
    assert ranks[0]["index"] == ranks[1]["index"] and ranks[0]["index"]["complete"]
    assert ranks[0]["clips"] == ranks[1]["clips"] == 6 and ranks[0]["ranks"] == 2
    # the group ended with prepare: no Gloo thread runs on into interpreter shutdown, where one
    # that still releases a collective's tensors aborts the rank after its work is done
    assert not [t for r in ranks for t in r["threads"] if "gloo" in t], [r["threads"] for r in ranks]


# ----------------------------------------------------------------------------- reader threads
def test_reader_threads_write_what_the_serial_path_writes(parts, tmp_path, monkeypatch):
    from resforce.worlds.latents.prepare import prepare
    from resforce.worlds.video_folder import reader

    readers, crop = set(), reader.crop_resize

    def recording_crop(image, size):
        readers.add(threading.current_thread().name)
        return crop(image, size)

    monkeypatch.setattr(reader, "crop_resize", recording_crop)
    serial, threaded = [], []
    prepare(options(parts, tmp_path / "serial"), after_video=serial.append, progress=False)
    assert readers == {"MainThread"}
    readers.clear()
    prepare(options(parts, tmp_path / "threads", workers=3), after_video=threaded.append, progress=False)
    assert readers and "MainThread" not in readers  # decoding and resizing ran in the reader threads
    assert sorted(serial) == sorted(threaded) and len(threaded) == len(set(threaded)) == 7  # each video once
    same_dataset(tmp_path / "serial", tmp_path / "threads")


def test_the_reader_queue_is_bounded(parts, monkeypatch):
    """A consumer that stops taking items stops the readers: at most queue_depth items wait and
    each worker holds one more, so memory does not grow with the number of videos."""
    from resforce.worlds.latents import reader
    from resforce.worlds.latents.captions import Captions

    made, real = [], reader.clip_groups

    def counting(path, spec):
        for group in real(path, spec):
            made.append(1)
            yield group

    monkeypatch.setattr(reader, "clip_groups", counting)
    root = parts / "videos"
    tasks = [reader.VideoTask(root / "sub" / "clip2.mp4", f"copy{i}") for i in range(8)]  # two 1-clip groups each
    items = reader.read_videos(tasks, Captions(root), reader.ClipSpec(33, (32, 32), batch=1), workers=2,
                               queue_depth=1)
    first = next(items)
    last, deadline = -1, time.monotonic() + 5
    while len(made) != last and time.monotonic() < deadline:  # until the readers stop producing
        last = len(made)
        time.sleep(0.3)
    assert first.kind == "clips" and len(made) <= 1 + 1 + 2, made  # taken, queue_depth waiting, 1 per worker
    rest = list(items)
    assert sum(i.kind == "clips" for i in [first, *rest]) == 16 and sum(i.kind == "end" for i in rest) == 8


# ----------------------------------------------------------------------------- bad videos
def test_a_corrupt_video_is_skipped_by_name_and_a_failing_read_is_an_error_naming_it(parts, tmp_path, capsys,
                                                                                     monkeypatch):
    import av

    from resforce.cli.main import main

    args = ["prepare", str(parts / "videos"), "--vae", str(parts / "vae"), "--text-encoder", str(parts / "wan"),
            "--out", str(tmp_path / "ds"), "--chunks", "3", "--size", "32", "32", "--clips-per-video", "0",
            "--dtype", "float32", "--workers", "2", "--quiet"]
    bad = parts / "videos" / "clip1.mp4"
    real_open = av.open

    def failing_open(file, *a, **kw):  # the disk fails under one file
        if str(file) == str(bad):
            raise OSError(5, "Input/output error")
        return real_open(file, *a, **kw)

    monkeypatch.setattr(av, "open", failing_open)
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"error: reading {bad} failed: OSError" in err and "Traceback" not in err
    assert not (tmp_path / "ds" / "clips" / "clip1.mp4.safetensors").exists()

    monkeypatch.setattr(av, "open", real_open)  # the disk is back: the same command finishes the dataset
    main(args)
    out = capsys.readouterr().out
    corrupt = parts / "videos" / "corrupt.mp4"
    assert f"skipped {corrupt}: cannot decode" in out and "skipped 3 video(s)" in out
    index = json.loads((tmp_path / "ds" / "index.json").read_text())
    assert {s["source"] for s in index["skipped"]} == {"corrupt.mp4", "short.mp4", "uncaptioned.mp4"}
    assert index["complete"] and "clip1.mp4" in index["done"]


# ----------------------------------------------------------------------------- precision, throughput
def test_the_vae_dtype_flag_and_the_throughput_line(parts, tmp_path, capsys):
    from resforce.worlds.latents.dataset import LatentDataset
    from resforce.worlds.latents.prepare import prepare

    prepare(options(parts, tmp_path / "fp32"), progress=False)
    out = capsys.readouterr().out
    assert "encoded 6 clip(s) (198 frames) of 4 video(s) in " in out and " clips/s, " in out and " frames/s " in out
    prepare(options(parts, tmp_path / "bf16", vae_dtype="bfloat16"), progress=False)
    fp32, bf16 = LatentDataset(tmp_path / "fp32"), LatentDataset(tmp_path / "bf16")
    assert fp32.index["vae"]["dtype"] == "float32" and bf16.index["vae"]["dtype"] == "bfloat16"  # auto: fp32 on CPU
    for i in range(len(fp32)):
        a, b = fp32.clip(i)[0], bf16.clip(i)[0]
        assert not torch.equal(a, b) and (a - b).abs().max() < 0.1 * a.abs().max()
    with pytest.raises(ValueError, match="--vae-dtype='float16'"):
        prepare(options(parts, tmp_path / "x", vae_dtype="float16"))


if __name__ == "__main__":  # run by torchrun from the test above
    _driver(*sys.argv[1:4])
