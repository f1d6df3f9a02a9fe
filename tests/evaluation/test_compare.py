"""eval and compare end to end on two tiny runs: table, JSON, HTML page with videos and plots."""

import json

import pytest

from resforce.cli.main import main
from browser import NO_BROWSER, body_attrs, dump_dom, find_browser, serve
from tiny import tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    main(["train", "configs/bb_resampling.yaml", *tiny(root / "warm", "stages.0.steps=2", "stages.1.steps=0")])
    for name in ("teacher", "resampling"):
        main(["train", f"configs/bb_{name}.yaml", *tiny(root / name, "stages.0.steps=2", "stages.1.steps=2", "stages.0.clip_chunks=4", "stages.1.clip_chunks=4"),
              "--init-from", str(root / "warm")])
    return root


def test_eval_prints_segment_table_and_json(runs, tmp_path, capsys):
    out = tmp_path / "e.json"
    main(["eval", str(runs / "resampling"), "--chunks", "14", "--samples", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert "failure" in text and "identity_error" in text and "0-4" in text and "12-16 *" in text  # training clips: 4 frames
    data = json.loads(out.read_text())
    assert data["samples"] == 3 and data["frames"] == 16 and data["prefix_frames"] == 2
    assert [r["start"] for r in data["rows"]] == [0, 4, 8, 12] and data["dropped_tail_frames"] == 0
    assert len(data["per_frame_mean"]["failure"]) == 16 and "drift" not in data["per_frame_mean"]
    assert len(data["per_sample_segments"]["failure"]) == 3  # samples x whole segments, for paired differences
    assert all(len(s) == 4 for s in data["per_sample_segments"]["lost"])
    # Frechet against a large independent reference, with the ground truth of the same clips as floor
    assert data["frechet_reference"]["clips"] == 256 and len(data["frechet_reference"]["floor"]) == 4
    assert all(r["mean"]["frechet"] >= 0 and r["mean"]["frechet_floor"] >= 0 for r in data["rows"])
    assert "frechet_floor" in text and "Frechet distances against 256 independent ground-truth clips" in text
    main(["eval", str(runs / "resampling"), "--chunks", "6", "--samples", "2", "--frechet-reference", "0",
          "--segment", "3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert "frechet" not in data["rows"][0]["mean"] and data["frechet_reference"] == {}
    assert [r["end"] for r in data["rows"]] == [3, 6] and data["dropped_tail_frames"] == 2
    with pytest.raises(SystemExit):
        main(["eval", str(runs / "resampling"), "--chunks", "2", "--samples", "1", "--segment", "9"])
    assert "--segment 9" in capsys.readouterr().err


def test_compare_writes_page_with_every_asset(runs, tmp_path):
    out = tmp_path / "cmp"
    main(["compare", str(runs / "teacher"), str(runs / "resampling"), "--names", "TF,RF",
          "--chunks", "10", "--samples", "2", "--out", str(out)])
    html = (out / "index.html").read_text()
    for asset in ("ground_truth.mp4", "tf.mp4", "rf.mp4", "failure_vs_horizon.png", "count_error_vs_horizon.png"):
        assert (out / asset).stat().st_size > 0
        assert asset in html
    assert "TF" in html and "RF" in html and (out / "table.txt").read_text().count("TF") >= 3
    assert "failure (bouncing balls" in html and "drift_vs_horizon" not in html
    # the page leads with a verdict computed from the paired numbers of the last segment
    assert '<p class="verdict">At ' in html and "RF − TF = " in html and "shared rollouts" in html
    assert "ball-count error" in html and "identity error" in html
    import av
    with av.open(str(out / "rf.mp4")) as f:  # large: each 8 px sample upscaled to 128 px
        assert f.streams.video[0].width >= 2 * 128  # 2 samples side by side
    browser = find_browser()
    if browser is None:
        pytest.skip(NO_BROWSER)
    server = serve(tmp_path)
    try:
        dom = dump_dom(browser, f"http://127.0.0.1:{server.server_address[1]}/cmp/index.html", tmp_path / "profile")
    finally:
        server.shutdown()
        server.server_close()
    a = body_attrs(dom)
    assert a["data-videos-loaded"] == a["data-videos-total"] == "3", a
    assert a["data-images-loaded"] == a["data-images-total"] and int(a["data-images-total"]) >= 4, a
    assert a["data-media-errors"] == "0", a


def test_demo_runs_from_the_shipped_models(tmp_path, capsys):
    from resforce.evaluation.demo import shipped_models

    assert all(p.is_file() for p in shipped_models().values())  # no retraining in make demo
    main(["demo", "--out", str(tmp_path), "--samples", "1", "--chunks", "3", "--segment", "2"])
    out = capsys.readouterr().out
    assert "demo report" in out and (tmp_path / "report" / "index.html").is_file()
    assert (tmp_path / "report" / "resampling_forcing.mp4").stat().st_size > 0


def test_verdict_is_computed_from_paired_numbers():
    """Clear winner, no clear difference, and unpaired inputs: the sentence follows the numbers."""
    from types import SimpleNamespace

    from resforce.evaluation.verdict import paired_verdict as verdict
    from resforce.worlds.bouncing_balls.world import BouncingBallsWorld

    def paired_verdict(evs):
        return verdict(evs, BouncingBallsWorld.verdict_metrics)

    def ev(name, count, identity=None):
        segs = {"count_error": [[0.0, x] for x in count]}
        if identity is not None:
            segs["identity_error"] = [[0.0, x] for x in identity]
        return SimpleNamespace(name=name, per_sample_segments=lambda: segs, rows=[{"start": 0, "end": 8},
                               {"start": 8, "end": 16}], generated=SimpleNamespace(train_frames=4))

    tf = ev("TF", [1.0, 0.9, 1.1, 1.0], identity=[1.0, 1.0, 1.0, 1.0])
    rf = ev("RF", [0.2, 0.3, 0.1, 0.2], identity=[1.3, 0.6, 1.4, 0.7])
    line = paired_verdict([tf, rf])
    assert line.startswith("At 4x the training length (frames 8-16, 4 shared rollouts, ± s.e.): ")
    assert "RF keeps the number of balls better (ball-count error RF 0.20, TF 1.00, paired RF − TF = -0.80 ± 0.08)" in line
    assert "; no clear difference in identity error" in line
    swapped = paired_verdict([rf, tf])  # the order of the pair changes the sign, not the winner
    assert "RF keeps the number of balls better" in swapped and "TF − RF = +0.80" in swapped
    assert paired_verdict([tf]) == "" and paired_verdict([tf, ev("RF", [0.1])]) == ""
