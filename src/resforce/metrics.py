"""The metrics' public names in one place (``from resforce import metrics as M``).

The code lives by concern:

| module             | what                                                             |
|--------------------|------------------------------------------------------------------|
| ball_analysis.py   | bouncing balls: pixels -> palette colours -> balls -> tracks      |
| ball_metrics.py    | bouncing balls: per-frame scores (``evaluate_bouncing_balls``)   |
| ball_identity.py   | bouncing balls: conserved identities, the ``failure`` aggregate  |
| video_metrics.py   | any world: sharpness, flicker, colour drift (``evaluate_generic``)|
| frechet.py         | any world: Frechet distance of cheap frame features              |
| stats.py           | NaN-aware statistics: mean ± s.e., paired differences, tables    |
"""

from .ball_analysis import BallAnalysis, analyze_balls, blob_centroids, connected_components, segment_colors, track_balls
from .ball_identity import FAILURE_DEFINITION
from .ball_metrics import evaluate_bouncing_balls
from .frechet import FEATURE_DIM, frame_features, frechet_distance, frechet_vs_horizon
from .stats import format_table, mean_se, paired_difference, segment_table, to_markdown, whole_segments
from .video_metrics import DRIFT_DEFINITION, color_drift, color_stats, evaluate_generic, flicker, sharpness

__all__ = [
    "DRIFT_DEFINITION",
    "FAILURE_DEFINITION",
    "FEATURE_DIM",
    "BallAnalysis",
    "segment_colors",
    "connected_components",
    "analyze_balls",
    "blob_centroids",
    "track_balls",
    "evaluate_bouncing_balls",
    "sharpness",
    "flicker",
    "color_stats",
    "color_drift",
    "evaluate_generic",
    "frame_features",
    "frechet_distance",
    "frechet_vs_horizon",
    "mean_se",
    "paired_difference",
    "whole_segments",
    "segment_table",
    "format_table",
    "to_markdown",
]
