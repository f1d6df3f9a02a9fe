"""Tests for resforce.evaluation.report: the static comparison page, its plots and videos.

The browser test loads the page in headless Chromium (served over HTTP on 127.0.0.1) and
checks from the dumped DOM that every <img> and <video> really loaded and decoded.
"""

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from resforce.metrics.stats import segment_table
from resforce.evaluation import report as R

from browser import NO_BROWSER, body_attrs, dump_dom, find_browser, serve



def tiny_video(frames=6, size=32, seed=0):
    """(3, F, H, W) in [-1, 1]: a red square moving right on black."""
    v = -np.ones((3, frames, size, size), np.float32)
    for f in range(frames):
        x = 2 + 3 * f
        v[0, f, 10:18, x : x + 8] = 1.0
    return v


def fake_results(seed=0, m=4, f=40):
    rng = np.random.default_rng(seed)
    t = np.arange(f)
    return {
        "teacher forcing": {"drift": 0.01 * t + 0.05 * rng.random((m, f)), "flicker": rng.random((m, f))},
        "resampling forcing": {"drift": 0.002 * t + 0.05 * rng.random((m, f)), "flicker": rng.random((m, f))},
    }


def build_page(out: Path, video_ext=".mp4"):
    vids = []
    for i, name in enumerate(["teacher forcing", "resampling forcing"]):
        rel = f"videos/method{i}{video_ext}"
        R.save_video(out / rel, tiny_video(seed=i), fps=8)
        vids.append(rel)
    res = fake_results()
    plots = []
    for metric in ["drift", "flicker"]:
        rel = f"plots/{metric}.png"
        R.plot_metric_vs_horizon(res, metric, out / rel, train_len=16, smooth=3)
        plots.append(rel)
    methods = [
        {"name": name, "video_path": vids[i], "rows": segment_table(res[name], 10, train_len=16), "caption": "seed 0"}
        for i, name in enumerate(res)
    ]
    page = R.write_compare_page(out, methods, plots, title="Drift <test>", notes="line one\n\nline & two")
    return page, vids, plots


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        for k in ("src", "href"):
            if a.get(k):
                self.refs.append(a[k])


def test_page_generated_and_references_existing_files(tmp_path):
    out = tmp_path / "site"
    page, vids, plots = build_page(out)
    assert page == out / "index.html" and page.is_file()
    text = page.read_text()
    p = _Refs()
    p.feed(text)
    # every referenced file exists and is relative; nothing external (no CDN, no http)
    assert sorted(p.refs) == sorted(vids + plots)
    for ref in p.refs:
        assert not re.match(r"^[a-z]+:|^/", ref)
        assert (out / ref).is_file() and (out / ref).stat().st_size > 0
    assert "http://" not in text and "https://" not in text
    videos = [a for t, a in p.tags if t == "video"]
    assert len(videos) == 2 and all({"loop", "muted", "autoplay"} <= set(a) and "controls" not in a for a in videos)
    assert text.count("<img") == 2
    assert "Drift &lt;test&gt;" in text and "line &amp; two" in text
    assert '<table class="metrics">' in text and 'class="beyond"' in text
    assert "resampling forcing" in text and "20-30 *" in text and "30-40 *" in text
    # atomic writes leave no temporary files behind
    leftovers = [f for f in out.rglob("*") if f.name.startswith(".")]
    assert leftovers == []
    # PNGs and MP4s are real
    assert (out / plots[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"ftyp" in (out / vids[0]).read_bytes()[:16]


def test_save_video_roundtrip(tmp_path):
    av = pytest.importorskip("av")
    for ext in (".mp4", ".webm"):
        path = R.save_video(tmp_path / f"v{ext}", tiny_video(frames=5, size=31), fps=8)
        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 5
        assert frames[0].shape == (156, 156, 3)  # 31 * 5 = 155 (>= 128), padded to even
        assert frames[0][60, 20:30, 0].mean() > 200  # red square survives encoding


def test_page_rejects_missing_or_absolute(tmp_path):
    with pytest.raises(FileNotFoundError):
        R.write_compare_page(tmp_path, [{"name": "x", "video_path": "nope.mp4"}], [])
    with pytest.raises(ValueError):
        R.write_compare_page(tmp_path, [{"name": "x", "video_path": "/etc/passwd"}], [], check_files=False)
    with pytest.raises(ValueError):
        R.write_compare_page(tmp_path, [], ["https://cdn.example/plot.png"], check_files=False)


def test_page_loads_in_headless_chromium(tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip(NO_BROWSER)
    out = tmp_path / "site"
    build_page(out)
    # negative control: an undecodable video and a missing image must be reported as not loaded
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.mp4").write_bytes(b"not a video" * 50)
    (bad / "broken.png").write_bytes(b"not a png")
    R.write_compare_page(bad, [{"name": "broken", "video_path": "broken.mp4"}], ["broken.png"])

    server = serve(tmp_path)
    try:
        port = server.server_address[1]
        dom = dump_dom(browser, f"http://127.0.0.1:{port}/site/index.html", tmp_path / "profile")
        dom_bad = dump_dom(browser, f"http://127.0.0.1:{port}/bad/index.html", tmp_path / "profile")
    finally:
        server.shutdown()
        server.server_close()

    a = body_attrs(dom)
    assert a.get("data-images-total") == "2" and a.get("data-images-loaded") == "2", a
    assert a.get("data-videos-total") == "2" and a.get("data-videos-loaded") == "2", a
    assert a.get("data-media-errors") == "0", a
    assert len(re.findall(r"<video[^>]*data-loaded=\"1\"", dom)) == 2
    assert len(re.findall(r"<img[^>]*data-loaded=\"1\"", dom)) == 2

    b = body_attrs(dom_bad)
    assert b.get("data-videos-loaded") == "0" and b.get("data-images-loaded") == "0", b
    assert b.get("data-media-errors") == "2", b
