"""evaluation.evaluate.saved_segments: a saved evaluation's per-sample segment means as arrays."""

import json

import numpy as np

from resforce.evaluation.evaluate import saved_segments


def test_saved_segments_are_float_arrays_with_nan_for_null():
    saved = json.loads(json.dumps({"per_sample_segments": {"lost": [[0, 1.5], [None, 2]], "follow": [[1, 1]]}}))
    segs = saved_segments(saved)
    assert set(segs) == {"lost", "follow"} and segs["lost"].dtype == np.float64
    assert segs["lost"].shape == (2, 2) and np.isnan(segs["lost"][1, 0])
    assert np.array_equal(segs["lost"][[0, 0, 1], [0, 1, 1]], [0.0, 1.5, 2.0])
