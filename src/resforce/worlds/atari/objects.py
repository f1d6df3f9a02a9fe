"""The objects of Pong and Breakout found in frames from their pixels (no RAM needed), so a
generated video is scored like the game: Pong's ball and both paddles, Breakout's ball, paddle
and bricks.

Why not look for the objects' colours: a world frame is the 210x160 screen area-resized to
32x32 or 64x64 (emulator.resize_screen). At 32x32 one frame pixel averages 5 x 6.6 screen
pixels, so the 2x4-pixel ball covers at most a quarter of one pixel: its white (Pong) or red
(Breakout) is blended with the field's colour, split over up to four pixels, and no pixel holds
the ball's colour. A Pong paddle (4 columns of the screen) covers 4/5 of one frame column.

What the detector uses instead: the area resize is linear, so a frame is the resize of the
static scene (the field, its walls and borders, all drawn the same in every frame) plus, for
each moving object, the resize of its pixels times (its colour - the colour it covers). The
scene and the objects' sprites (sizes, colours, the screen rows and columns they are drawn
in) are those of ALE's screens, listed below; they go through the world's own resize
(`emulator.area_weights`), so the blending at 32x32 is the one the world's frames have. For
each object the detector tries every screen position the object can take and keeps the one
whose resized sprite, scaled by least squares, explains the most of what the frame has beyond
the scene (a matched filter: `fit_sprite`). Positions that resize to the same pixels are one
candidate at their mean, so the found position is the centre of what the frame can tell apart.
Breakout's bricks are fitted the same way, all 108 at once (each brick's resized image is a
column of a linear least-squares problem): the bricks left are those of fitted presence over
one half. Objects are fitted one after another, each subtracted from the frame before the next
(paddles before the ball, so the ball is not taken for part of a paddle).

Of the candidates drawn at about the object's full colour (least-squares scale in [0.5, 1.5])
the one that explains the most is kept; the object is found when it also explains at least
half of the frame's difference from the scene around it (the sprite's pixels and one pixel
beyond) and at least a quarter of it lies where the game draws it (a paddle at the field's
edge shows 4 of its 16 rows). A blank frame has no sprite of positive scale; a noisy or
smeared frame has a difference everywhere that one sprite cannot explain; the detector is
built to miss a doubtful object rather than invent one. The same quarter-drawn rule says
whether the RAM's ground truth shows an object (`shown_in_ram`: the Pong ball between points,
the enemy paddle above the field before a game starts, Breakout's ball before a serve or
below the paddle are not shown). The score above the scene's first analysed row (digits that
change) is left out of every fit.

Positions are world pixel indices (x, y) of the object's centre (ram.to_world of screen
pixels): the centre of the whole sprite, a partly hidden paddle included, as ram.py decodes
them. Frames are (B, C, F, H, W) in [-1, 1], RGB at the world's resolution; the screen layouts
below were read off ALE's 210x160 screens (the per-pixel median of an episode, and the pixels
of each object's colour against the RAM positions of ram.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from resforce.worlds.atari.emulator import SCREEN, area_weights
from resforce.worlds.atari.ram import to_world

MIN_SCALE, MAX_SCALE = 0.5, 1.5
"""A found sprite's least-squares scale: drawn at about its full colour."""
MIN_EXPLAINED = 0.5
"""A found sprite explains at least this fraction of the frame's difference from the scene
over its pixels and one pixel beyond."""
MIN_SHOWN = 0.25
"""An object is shown (and can be found) when at least this fraction of its sprite lies
where the game draws it (a Pong paddle at the bottom of the field shows 4 of its 16 rows)."""
MIN_WALL_EXPLAINED = 0.85
"""Breakout: the bricks' fit explains at least this fraction of the frame's difference from
the scene over the wall's rows; below it no wall is found and no brick is counted."""


@dataclass(frozen=True)
class Sprite:
    """A moving object: a rectangle of one colour (screen pixels) drawn over the game's `under`."""

    name: str
    colour: tuple[int, int, int]
    height: int
    width: int
    rows: tuple[int, int]
    """Screen rows [start, end) where it is drawn (it is clipped outside them)."""
    cols: tuple[int, int]
    """Screen columns [start, end) where it is drawn."""
    tops: tuple[int, int]
    """Top rows [first, last] it can take."""
    lefts: tuple[int, int]
    """Left columns [first, last] it can take."""


@dataclass(frozen=True)
class Bricks:
    """Breakout's wall: one row of `cols` bricks per colour of `colours` (top row first), each
    brick `size` (height, width) screen pixels, from screen (top, left)."""

    top: int
    left: int
    size: tuple[int, int]
    colours: tuple[tuple[int, int, int], ...]
    cols: int


@dataclass(frozen=True)
class Game:
    """What the detector knows of a game's screen: the static scene (a list of filled screen
    boxes over a fill colour), the rows above `first_row` (the score, which changes) left out,
    the colour the objects are drawn over, the sprites in fitting order and the bricks."""

    fill: tuple[int, int, int]
    boxes: tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, int, int]], ...]
    """((row start, row end), (col start, col end), colour) drawn over `fill`."""
    first_row: int
    under: tuple[int, int, int]
    sprites: tuple[Sprite, ...]
    bricks: Bricks | None = None

    def scene(self) -> np.ndarray:
        """The static screen (210, 160, 3) float: what every frame shows without the objects."""
        s = np.empty((*SCREEN, 3), np.float64)
        s[:] = self.fill
        for (r0, r1), (c0, c1), colour in self.boxes:
            s[r0:r1, c0:c1] = colour
        return s


# Pong: the score in rows 0-23, white borders in rows 24-33 and 194-209, the brown field
# between; the paddles (4x16) in columns 16-19 (enemy, orange) and 140-143 (player, green) are
# drawn in the field's rows only, so a paddle at the field's edge is partly hidden; the ball
# (2x4, white) anywhere in the field.
PONG_FIELD = (34, 194)
PONG = Game(
    fill=(144, 72, 17), first_row=24, under=(144, 72, 17),
    boxes=(((24, 34), (0, 160), (236, 236, 236)), ((194, 210), (0, 160), (236, 236, 236))),
    sprites=(
        Sprite("enemy", (213, 130, 74), 16, 4, PONG_FIELD, (0, 160), (PONG_FIELD[0] - 15, PONG_FIELD[1] - 1), (16, 16)),
        Sprite("player", (92, 186, 92), 16, 4, PONG_FIELD, (0, 160), (PONG_FIELD[0] - 15, PONG_FIELD[1] - 1), (140, 140)),
        Sprite("ball", (236, 236, 236), 4, 2, PONG_FIELD, (0, 160), (PONG_FIELD[0] - 3, PONG_FIELD[1] - 1), (0, 158)),
    ))

# Breakout: the score and lives in rows 0-16, a grey top wall in rows 17-31 and grey side walls
# in columns 0-7 and 152-159 (their lowest rows 189-195 teal on the left, red on the right);
# the wall of 6 x 18 bricks (8x6 each) from row 57, column 8, one colour per row; the paddle
# (16x4, red) in rows 189-192 with its left column in 8..144 (it slides under the red bottom of
# the right wall); the ball (2x4, red) between the walls, down to row 195.
BREAKOUT = Game(
    fill=(0, 0, 0), first_row=17, under=(0, 0, 0),
    boxes=(((17, 32), (0, 160), (142, 142, 142)), ((32, 189), (0, 8), (142, 142, 142)),
           ((32, 189), (152, 160), (142, 142, 142)), ((189, 196), (0, 8), (66, 158, 130)),
           ((189, 195), (152, 160), (200, 72, 72))),
    sprites=(
        Sprite("player", (200, 72, 72), 4, 16, (189, 193), (8, 152), (189, 189), (8, 144)),
        Sprite("ball", (200, 72, 72), 4, 2, (32, 196), (8, 152), (32 - 3, 195), (8 - 1, 151)),
    ),
    bricks=Bricks(top=57, left=8, size=(6, 8), cols=18,
                  colours=((200, 72, 72), (198, 108, 58), (180, 122, 48), (162, 162, 42), (72, 160, 72),
                           (66, 72, 200))))

GAMES = {"pong": PONG, "breakout": BREAKOUT}
"""Games whose objects are found from pixels (the games ram.py decodes)."""


def visible_fraction(sprite: Sprite, top: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Fraction of the sprite with top-left (top, left) inside the rows and columns it is drawn in."""
    rows = np.clip(np.minimum(top + sprite.height, sprite.rows[1]) - np.maximum(top, sprite.rows[0]), 0, None)
    cols = np.clip(np.minimum(left + sprite.width, sprite.cols[1]) - np.maximum(left, sprite.cols[0]), 0, None)
    return rows * cols / (sprite.height * sprite.width)


def _axis(first: int, last: int, size: int, drawn: tuple[int, int], weights: np.ndarray):
    """Candidate starts first..last of a sprite `size` long on one axis drawn in [drawn): the
    resized profile of each (R,) as columns of (R, K), merged where two starts resize to the
    same profile, and each one's centre (screen pixels, the mean over merged starts)."""
    profiles, centres = {}, {}
    for s in range(first, last + 1):
        a, b = max(s, drawn[0]), min(s + size, drawn[1])
        p = weights[:, a:b].sum(1) if b > a else np.zeros(weights.shape[0])
        key = np.round(p, 9).tobytes()
        profiles.setdefault(key, p)
        centres.setdefault(key, []).append(s + size / 2 - 0.5)
    keys = list(profiles)
    return np.stack([profiles[k] for k in keys], 1), np.array([np.mean(centres[k]) for k in keys])


@dataclass
class _Fit:
    """A sprite's candidates at one resolution: profiles (R, K) per axis, their centres and
    starts (screen pixels), and the fraction of the sprite each (row, column) pair shows."""

    sprite: Sprite
    rows: np.ndarray
    cols: np.ndarray
    y: np.ndarray
    x: np.ndarray
    shown: np.ndarray
    colour: np.ndarray
    """(3,) the sprite's colour minus the colour it covers."""
    near_rows: np.ndarray
    """(R, Ky) 1 on each candidate's rows and one row beyond (likewise near_cols)."""
    near_cols: np.ndarray


def _widen(profiles: np.ndarray) -> np.ndarray:
    """(R, K) profiles -> 1.0 on the pixels each covers and one pixel either side, else 0."""
    on = profiles > 1e-9
    wide = on.copy()
    wide[1:] |= on[:-1]
    wide[:-1] |= on[1:]
    return wide.astype(np.float64)


@functools.lru_cache(maxsize=None)
def _model(game_name: str, resolution: int):
    """(scene (3, R, R), analysed pixels (R, R), sprite fits, brick templates (n, 3, R, R) or
    None) of a game at a resolution, all in screen colour units (0-255)."""
    game = GAMES[game_name]
    wh, ww = area_weights(SCREEN[0], resolution).astype(np.float64), area_weights(SCREEN[1], resolution).astype(np.float64)
    scene = np.einsum("hr,rcx,wc->xhw", wh, game.scene(), ww)
    analysed = np.broadcast_to((wh[:, :game.first_row].sum(1) == 0)[:, None], (resolution, resolution))
    fits = []
    for s in game.sprites:
        rows, y = _axis(*s.tops, s.height, s.rows, wh)
        cols, x = _axis(*s.lefts, s.width, s.cols, ww)
        # every merged start of a profile shows the same number of pixels: the mean start does too
        shown = visible_fraction(s, np.round(y - s.height / 2 + 0.5)[:, None], np.round(x - s.width / 2 + 0.5)[None])
        fits.append(_Fit(s, rows, cols, y, x, shown, np.subtract(s.colour, game.under, dtype=np.float64),
                         _widen(rows), _widen(cols)))
    bricks = None
    if game.bricks is not None:
        b = game.bricks
        h, w = b.size
        bricks = np.stack([np.einsum("c,h,w->chw", np.subtract(colour, game.under, dtype=np.float64),
                                     wh[:, b.top + r * h:b.top + (r + 1) * h].sum(1),
                                     ww[:, b.left + c * w:b.left + (c + 1) * w].sum(1))
                           for r, colour in enumerate(b.colours) for c in range(b.cols)])
    return scene, analysed, fits, bricks


@dataclass
class Objects:
    """What the detector found in frames shaped (M, F): per object name, `found` (M, F) bool and
    `position` (M, F, 2) world pixels (x, y) (NaN where not found); Breakout's `bricks` (M, F),
    the bricks left (0 where no wall is found)."""

    found: dict[str, np.ndarray]
    position: dict[str, np.ndarray]
    bricks: np.ndarray | None = None


def fit_sprite(residual: np.ndarray, fit: _Fit):
    """The best position of a sprite in residual frames (N, 3, R, R) (frame - scene, screen
    units). Every candidate (row profile a, column profile b) is the resized sprite d a b^T (d:
    its colour minus the colour it covers) at its least-squares scale; a candidate is drawn
    when that scale is in [MIN_SCALE, MAX_SCALE] and it explains at least MIN_EXPLAINED of the
    residual's energy over its pixels and one pixel beyond, and the drawn candidate that
    explains the most energy is kept. Returns (found (N,): drawn and at least MIN_SHOWN of it
    where the game draws it, centre (N, 2) screen (x, y), model (N, 3, R, R): the fitted sprite,
    zero where none is drawn)."""
    d = fit.colour
    coverage = np.einsum("nchw,c->nhw", residual, d) / (d @ d)  # the residual projected on the colour
    corr = (fit.rows.T @ coverage) @ fit.cols  # <coverage, a b^T> of every candidate: (N, Ky, Kx)
    energy = np.outer((fit.rows ** 2).sum(0), (fit.cols ** 2).sum(0))  # |a b^T|^2
    # the residual's energy over each candidate's pixels and one pixel beyond (a box: separable)
    near = (fit.near_rows.T @ (residual ** 2).sum(1)) @ fit.near_cols
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = corr / energy
        gain = np.where(corr > 0, corr * scale, 0.0) * (d @ d)  # the energy the candidate explains
        explained = gain / near
    scaled = (scale >= MIN_SCALE) & (scale <= MAX_SCALE) & (near > 0)
    n, ky, kx = corr.shape
    best = np.where(scaled, gain, -1.0).reshape(n, -1).argmax(1)
    iy, ix = np.divmod(best, kx)
    rows = np.arange(n)
    drawn = scaled[rows, iy, ix] & (explained[rows, iy, ix] >= MIN_EXPLAINED)
    # a sprite mostly hidden (a paddle beyond the field's edge) is not found, but its pixels
    # are still taken out, so the next object is not fitted to them
    found = drawn & (fit.shown[iy, ix] >= MIN_SHOWN)
    mask = np.einsum("nh,nw->nhw", fit.rows[:, iy].T, fit.cols[:, ix].T)
    model = np.where(drawn, scale[rows, iy, ix], 0.0)[:, None, None, None] * np.einsum("c,nhw->nchw", d, mask)
    return found, np.stack([fit.x[ix], fit.y[iy]], 1), model


def fit_bricks(residual: np.ndarray, templates: np.ndarray, analysed: np.ndarray):
    """Breakout's bricks in residual frames (N, 3, R, R): the least-squares presence of each of
    the wall's bricks (its resized image a column), clipped to [0, 1]. Returns (bricks left (N,):
    the bricks of presence over one half, model (N, 3, R, R): the fitted wall); no wall (0
    bricks, nothing subtracted) where the fit explains under MIN_WALL_EXPLAINED of the frame's
    difference from the scene over the wall's pixels."""
    band = (templates.sum((0, 1)) > 0) & analysed
    a = templates[:, :, band].reshape(len(templates), -1)  # (bricks, 3 * pixels of the wall)
    y = residual[:, :, band].reshape(len(residual), -1)
    presence = np.clip(y @ np.linalg.pinv(a), 0.0, 1.0)
    fitted = presence @ a
    total = (y ** 2).sum(1)
    explained = 1 - ((y - fitted) ** 2).sum(1) / np.maximum(total, 1e-12)
    wall = (explained >= MIN_WALL_EXPLAINED) | (total == 0)
    presence = np.where(wall[:, None], presence, 0.0)
    return (presence > 0.5).sum(1).astype(np.float64), np.einsum("nb,bchw->nchw", presence, templates)


def detect(videos, game: str, chunk: int = 64) -> Objects:
    """The objects of `game` in videos (M, C, F, H, W) (or one (C, F, H, W)) in [-1, 1], RGB, at
    the world's resolution (square, 32 or 64)."""
    v = np.asarray(videos.detach().cpu().numpy() if hasattr(videos, "detach") else videos, dtype=np.float64)
    if v.ndim == 4:
        v = v[None]
    m, c, f, h, w = v.shape
    if c != 3 or h != w:
        raise ValueError(f"the {game} detector needs RGB square frames (M, 3, F, R, R), got {v.shape}")
    scene, analysed, fits, bricks = _model(game, h)
    frames = np.moveaxis(v, 2, 1).reshape(m * f, c, h, w)
    found = {ft.sprite.name: np.zeros(m * f, bool) for ft in fits}
    centre = {ft.sprite.name: np.full((m * f, 2), np.nan) for ft in fits}
    left = np.zeros(m * f) if bricks is not None else None
    for s in range(0, m * f, chunk):
        residual = np.where(analysed, (frames[s:s + chunk] + 1) * 127.5 - scene, 0.0)
        if bricks is not None:
            left[s:s + chunk], wall = fit_bricks(residual, bricks, analysed)
            residual = residual - wall
        for ft in fits:
            ok, xy, model = fit_sprite(residual, ft)
            residual = residual - model
            found[ft.sprite.name][s:s + chunk] = ok
            centre[ft.sprite.name][s:s + chunk] = np.where(ok[:, None], xy, np.nan)
    return Objects({k: v.reshape(m, f) for k, v in found.items()},
                   {k: to_world(v, h).reshape(m, f, 2) for k, v in centre.items()},
                   None if left is None else left.reshape(m, f))


def shown_in_ram(game: str, objects: dict[str, np.ndarray], resolution: int) -> Objects:
    """The RAM's ground truth (ram.decode: screen-pixel centres (..., 2), Breakout's bricks) as
    Objects: an object is shown where at least MIN_SHOWN of its sprite, placed at the decoded
    centre, lies where the game draws it; positions in world pixels."""
    found, position = {}, {}
    for s in GAMES[game].sprites:
        xy = np.asarray(objects[s.name], dtype=np.float64)
        top, lft = np.round(xy[..., 1] - s.height / 2 + 0.5), np.round(xy[..., 0] - s.width / 2 + 0.5)
        found[s.name] = visible_fraction(s, top, lft) >= MIN_SHOWN
        position[s.name] = to_world(xy, resolution).astype(np.float64)
    bricks = objects.get("bricks")
    return Objects(found, position, None if bricks is None else np.asarray(bricks, dtype=np.float64))
