"""The picture tracks: per class a static décor and moving parts, drawn as anti-aliased shapes.

Position, scale, rotation, colour shade and background texture vary with the clip's random
stream (`scene_params`); `render_frame` draws a scene at any time and size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from clipsonic.demo.synthetic.streams import PICTURE_STREAM, class_index, clip_rng
from clipsonic.errors import ClipsonicError

SIZE = 224  # CLIP's input resolution


# ----------------------------------------------------------------------------------------------
# Picture building blocks. Coordinates are in [-1, 1] across the frame, y pointing down; shapes
# are signed distances (negative inside), turned into anti-aliased coverage one pixel wide.

@dataclasses.dataclass
class _Frame:
    """A picture being painted: `image` float32 [3, H, W] in 0-255 (planar: blending one plane at
    a time is several times faster than [H, W, 3]), grid coordinates `gx`/`gy` [H, W], the clip's
    jittered object coordinates `x`/`y` [H, W] and the size of one pixel in each."""

    image: np.ndarray
    gx: np.ndarray
    gy: np.ndarray
    x: np.ndarray
    y: np.ndarray
    pixel: float  # one pixel in object units
    grid_pixel: float  # one pixel in grid units

    def paint(self, distance: np.ndarray, colour, opacity: float | np.ndarray = 1.0, grid: bool = False) -> None:
        """Paint `colour` (RGB, or planar [3, H, W]) where `distance` < 0, anti-aliased over one pixel;
        `opacity` is a number or a per-pixel weight [H, W]."""
        coverage = np.clip(0.5 - distance / (self.grid_pixel if grid else self.pixel), 0.0, 1.0)
        self.glow(coverage * opacity, colour)

    def glow(self, weight: np.ndarray, colour) -> None:
        """Blend `colour` in with a weight [H, W] in [0, 1], only over the rows and columns it touches."""
        rows, cols = np.flatnonzero(weight.any(axis=1)), np.flatnonzero(weight.any(axis=0))
        if rows.size == 0:
            return
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        colour = np.asarray(colour, dtype=np.float32)
        for channel in range(3):
            plane = self.image[channel][window]
            target = colour[channel][window] if colour.ndim == 3 else colour[channel]
            plane += weight[window] * (target - plane)


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    gx, gy = np.meshgrid(centres, centres)  # [H, W] each; row index is y
    gx.flags.writeable = gy.flags.writeable = False
    return gx, gy


@lru_cache(maxsize=8)
def _upsampler(low: int, size: int) -> np.ndarray:
    """Bilinear interpolation weights [size, low] from `low` knots across `size` pixels."""
    position = np.clip((np.arange(size) + 0.5) / size * low - 0.5, 0, low - 1)
    first = np.minimum(position.astype(np.int64), low - 2)
    blend = (position - first).astype(np.float32)
    weights = np.zeros((size, low), dtype=np.float32)
    weights[np.arange(size), first] = 1 - blend
    weights[np.arange(size), first + 1] = blend
    weights.flags.writeable = False  # cached and shared between threads
    return weights


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x - s * y, s * x + c * y


def _length(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.sqrt(x * x + y * y)  # np.hypot is several times slower on float32


def _circle(x, y, cx: float, cy: float, r: float) -> np.ndarray:
    return _length(x - cx, y - cy) - r


def _ellipse(x, y, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    u, v = _rotate(x - cx, y - cy, -angle)
    return (_length(u / rx, v / ry) - 1.0) * min(rx, ry)  # approximate, exact enough for an edge


def _box(x, y, cx: float, cy: float, half_w: float, half_h: float, angle: float = 0.0,
         radius: float = 0.0) -> np.ndarray:
    u, v = _rotate(x - cx, y - cy, -angle)
    qx, qy = np.abs(u) - half_w + radius, np.abs(v) - half_h + radius
    outside = _length(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - radius


def _segment(x, y, ax: float, ay: float, bx: float, by: float, width: float) -> np.ndarray:
    """A capsule of half-width `width` from (ax, ay) to (bx, by)."""
    dx, dy = bx - ax, by - ay
    along = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
    return _length(x - ax - along * dx, y - ay - along * dy) - width


def _mix(a, b, weight: np.ndarray) -> np.ndarray:
    """Per-pixel colour, planar [3, H, W], between RGB colours `a` and `b` (shading)."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return a[:, None, None] + np.clip(weight, 0, 1).astype(np.float32) * (b - a)[:, None, None]


# ----------------------------------------------------------------------------------------------
# Scenes: a base palette (RGB) per class; each class paints a backdrop and its moving parts.

_PALETTES = {
    "rain": dict(top=(60, 75, 100), bottom=(105, 120, 145), cloud=(48, 54, 66), streak=(195, 210, 230),
                 ground=(45, 55, 75), ripple=(150, 165, 190)),
    "bell": dict(top=(95, 35, 35), bottom=(55, 20, 25), bell=(220, 172, 55), shade=(140, 100, 28),
                 shine=(255, 235, 150), yoke=(70, 45, 30), clapper=(110, 80, 30), spot=(150, 70, 50)),
    "bird": dict(top=(115, 180, 95), bottom=(45, 105, 50), leaf_light=(125, 195, 90), leaf_dark=(35, 95, 45),
                 branch=(95, 65, 40), bird=(30, 32, 38), beak=(235, 150, 40), eye=(240, 240, 230)),
    "engine": dict(top=(72, 72, 76), bottom=(36, 36, 40), block=(185, 35, 30), block_dark=(110, 22, 20),
                   head=(165, 165, 172), pulley=(22, 22, 25), pipe=(125, 125, 130), shadow=(15, 15, 15)),
    "drum": dict(top=(110, 50, 130), bottom=(58, 24, 80), spot=(175, 110, 195), shell=(230, 115, 35),
                 hoop=(195, 195, 200), head=(238, 228, 205), lace=(250, 240, 220), stick=(170, 120, 70)),
    "siren": dict(top=(8, 10, 28), bottom=(30, 30, 46), roof=(24, 24, 30), bar=(62, 62, 70),
                  red=(250, 35, 30), blue=(40, 80, 255), dim_red=(90, 20, 20), dim_blue=(20, 30, 90),
                  street=(210, 175, 90)),
    "wind": dict(top=(180, 208, 230), bottom=(222, 234, 240), swirl=(252, 253, 255), stream=(238, 245, 250),
                 leaf=(160, 125, 60)),
    "clock": dict(top=(172, 122, 76), bottom=(132, 88, 52), grain=(120, 80, 45), face=(246, 244, 236),
                  rim=(45, 40, 38), marks=(30, 30, 30), second=(215, 30, 30), shadow=(40, 25, 15)),
    "thunder": dict(top=(40, 30, 95), bottom=(95, 75, 150), cloud=(58, 48, 100), bolt=(250, 248, 200),
                    glow=(180, 170, 255), hills=(14, 16, 22)),
    "dog": dict(top=(150, 200, 235), bottom=(90, 160, 70), fur=(170, 110, 50), fur_dark=(110, 65, 30),
                nose=(25, 20, 20), tongue=(230, 90, 110), eye=(20, 20, 20)),
    "footsteps": dict(top=(190, 150, 100), bottom=(150, 112, 70), pebble=(215, 185, 140), shoe=(50, 40, 35),
                      sole=(25, 22, 20), trouser=(40, 55, 95), print=(120, 88, 55)),
    "stream": dict(top=(70, 125, 60), bottom=(50, 100, 45), water=(55, 120, 190), foam=(215, 235, 250),
                   stone=(125, 125, 120), stone_dark=(80, 80, 78)),
    "fire": dict(top=(18, 10, 8), bottom=(40, 22, 12), log=(105, 60, 30), log_end=(190, 140, 90),
                 outer=(230, 80, 20), inner=(255, 200, 60), ember=(255, 120, 30)),
    "phone": dict(top=(225, 210, 180), bottom=(160, 120, 80), body=(200, 30, 35), body_dark=(130, 15, 20),
                  dial=(240, 235, 225), cord=(60, 20, 20), ring=(40, 40, 40)),
    "horn": dict(top=(120, 150, 180), bottom=(70, 70, 75), car=(240, 190, 20), car_dark=(170, 120, 10),
                 window=(160, 200, 230), wheel=(25, 25, 28), honk=(255, 255, 255), lane=(235, 235, 235)),
    "whistle": dict(top=(250, 220, 45), bottom=(230, 195, 30), metal=(200, 205, 212), metal_dark=(120, 125, 135),
                    cord=(230, 40, 40), line=(20, 20, 22), blast=(255, 190, 40)),
}


# Each class paints in two steps: its backdrop (what never moves; drawn once per clip) and its
# moving parts (drawn on a copy of the backdrop for every frame).

def _rain_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy, rx, ry in p["clouds"]:
        f.paint(_ellipse(f.gx, f.gy, cx, cy, rx, ry), p["colours"]["cloud"], 0.9, grid=True)
    f.paint(p["ground_y"] - f.gy, p["colours"]["ground"], grid=True)


def _rain_moving(f: _Frame, p: dict, t: float) -> None:
    # Falling streaks: the frame is cut into slanted columns; each column has its own dash phase.
    across, along = _rotate(f.gx, f.gy, -p["slant"])
    spacing, period = p["spacing"], p["period"]
    column = np.floor((across + 2) / spacing).astype(np.int64) % len(p["phases"])
    side = np.abs((across + 2) - (column + 0.5) * spacing - p["offsets"][column] * spacing) - p["width"]
    position = (((along - p["speed"] * t) / period + p["phases"][column]) % 1.0) * period
    f.paint(np.maximum(side, np.maximum(position - p["length"], -position)), p["colours"]["streak"], 0.75, grid=True)
    for cx, cy, phase in p["ripples"]:  # rings spreading on the puddles
        grow = (t * 0.8 + phase) % 1.0
        ring = np.abs(_ellipse(f.gx, f.gy, cx, cy, 0.03 + 0.2 * grow, 0.01 + 0.05 * grow)) - 0.008
        f.paint(ring, p["colours"]["ripple"], 1.0 - grow, grid=True)


def _bell_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy, r in p["spots"]:  # warm out-of-focus lights behind
        f.glow(0.35 * np.exp(-(_length(f.gx - cx, f.gy - cy) / r) ** 2), p["colours"]["spot"])
    f.paint(_box(f.x, f.y, 0, -0.64, 0.5, 0.05, radius=0.02), p["colours"]["yoke"])


def _bell_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    swing = p["swing"] * math.sin(2 * math.pi * p["swing_rate"] * t + p["swing_phase"])
    x, y = _rotate(f.x, f.y + 0.58, -swing)  # swing about the pivot under the yoke
    y = y - 0.58
    width = p["width"]
    flare = width * (0.16 + 0.26 * np.clip((y + 0.5) / 0.8, 0, 1) ** 2.2)
    body = np.maximum(np.abs(x) - flare, np.maximum(-0.5 - y, y - 0.3))
    shading = _mix(c["bell"], c["shade"], 0.35 + 1.2 * x)
    f.paint(_circle(x, y, -0.6 * math.sin(swing), 0.38, 0.06), c["clapper"])  # lags the swing
    f.paint(_ellipse(x, y, 0, -0.48, 0.17 * width, 0.1), shading)
    f.paint(body, shading)
    f.paint(_ellipse(x, y, 0, 0.3, 0.44 * width, 0.06), _mix(c["shade"], c["bell"], 0.5 - x))
    f.paint(_ellipse(x, y, -0.13 * width, -0.08, 0.03, 0.26, angle=-0.12), c["shine"], 0.6)


def _bird_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    for cx, cy, rx, ry, angle, light in p["leaves"]:
        colour = c["leaf_dark"] + light * (c["leaf_light"] - c["leaf_dark"])
        f.paint(_ellipse(f.gx, f.gy, cx, cy, rx, ry, angle), colour, grid=True)
    x, y, slope = f.x * p["facing"], f.y, p["branch_slope"]
    f.paint(_segment(x, y, -1.6, 0.3 - 1.6 * slope, 1.6, 0.3 + 1.6 * slope, 0.035), c["branch"])


def _bird_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    step = 0.15 * math.sin(2 * math.pi * p["walk_rate"] * t + p["walk_phase"])  # it sidles along the branch
    x, y = f.x * p["facing"] - step, f.y - step * p["branch_slope"]  # some birds look left
    for foot in (-0.05, 0.06):
        f.paint(_segment(x, y, foot, 0.1, foot + 0.02, 0.3 + foot * p["branch_slope"], 0.012), c["bird"])
    f.paint(_box(x, y, -0.31, 0.08, 0.14, 0.04, angle=0.45), c["bird"])  # tail
    f.paint(_ellipse(x, y, 0, 0, 0.26, 0.15, angle=-0.25), c["bird"])
    f.paint(_circle(x, y, 0.25, -0.15, 0.1), c["bird"])
    f.paint(_ellipse(x, y, 0.37, -0.14, 0.07, 0.022, angle=0.1), c["beak"])
    f.paint(_circle(x, y, 0.28, -0.18, 0.02), c["eye"])
    flap = -0.3 - 0.6 * (0.5 + 0.5 * math.sin(2 * math.pi * p["flap_rate"] * t + p["flap_phase"]))
    wx, wy = _rotate(x - 0.05, y + 0.06, -flap)
    f.paint(_ellipse(wx, wy, -0.14, 0, 0.2, 0.06), c["bird"] + 28)


def _nothing(f: _Frame, p: dict) -> None:
    """The backdrop of a scene that moves as a whole: the background alone."""


def _engine_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    shake = p["shake"]  # the whole engine trembles
    x = f.x + shake * math.sin(2 * math.pi * p["shake_rate"] * t)
    y = f.y + shake * math.sin(2 * math.pi * p["shake_rate"] * 1.3 * t + 1.0)
    f.paint(_ellipse(x, y, 0, 0.43, 0.6, 0.05), c["shadow"], 0.6)
    f.paint(_segment(x, y, 0.42, 0.0, 0.78, -0.4, 0.05), c["pipe"])  # exhaust
    f.paint(_box(x, y, 0, 0.12, 0.42, 0.26, radius=0.04), _mix(c["block"], c["block_dark"], (y + 0.1) * 2))
    cylinders = p["cylinders"]
    pitch = 0.76 / cylinders
    for k in range(cylinders):
        cx = -0.38 + pitch * (k + 0.5)
        f.paint(_box(x, y, cx, -0.2, pitch / 2 - 0.015, 0.07, radius=0.015), c["head"])
        f.paint(_circle(x, y, cx, -0.2, 0.02), c["shadow"])
    # The pulley and its belt: the spokes turn, the clearest motion between frames.
    f.paint(_segment(x, y, -0.55, -0.01, -0.3, -0.06, 0.015), c["pulley"])
    f.paint(_segment(x, y, -0.55, 0.31, -0.3, 0.3, 0.015), c["pulley"])
    f.paint(np.abs(_circle(x, y, -0.55, 0.15, 0.14)) - 0.03, c["pulley"])
    for k in range(3):
        angle = p["spin"] * t + k * 2 * math.pi / 3
        f.paint(_segment(x, y, -0.55, 0.15, -0.55 + 0.13 * math.cos(angle), 0.15 + 0.13 * math.sin(angle), 0.018),
                c["pulley"])


def _zigzag(x: np.ndarray, step: float) -> np.ndarray:
    """A triangle wave in [-1, 1] of period `step` (the drum's lacing)."""
    return 2 * np.abs(2 * ((x / step) % 1.0) - 1) - 1


def _drum_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    f.glow(0.5 * np.exp(-(_length(f.gx - p["spot_x"], f.gy + 0.1) / 0.8) ** 2), c["spot"])
    x, y, aspect = f.x, f.y, p["aspect"]
    f.paint(_ellipse(x, y, 0, 0.37, 0.42, 0.42 * aspect), c["shell"])
    f.paint(_box(x, y, 0, 0.15, 0.42, 0.22), _mix(c["shell"], c["shell"] * 0.7, (np.abs(x) - 0.2) * 4))
    lace = np.maximum(np.abs(y - 0.15 - 0.16 * _zigzag(x + 0.42, 0.14)) - 0.008, np.abs(x) - 0.42)
    f.paint(lace, c["lace"])
    f.paint(np.maximum(np.abs(y - 0.35) - 0.025, np.abs(x) - 0.43), c["hoop"])
    f.paint(_ellipse(x, y, 0, -0.07, 0.44, 0.44 * aspect + 0.02), c["hoop"])


def _drum_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    x, y = f.x, f.y
    lifts = [abs(math.sin(math.pi * p["hit_rate"] * t + phase)) for phase in p["hit_phases"]]
    flash = 1.0 - min(lifts)  # the head brightens as a stick lands
    f.paint(_ellipse(x, y, 0, -0.07, 0.42, 0.42 * p["aspect"]), np.minimum(c["head"] + 15 * flash, 255))
    for side, lift in zip((-1, 1), lifts):
        tip_x, tip_y = 0.14 * side, -0.1 - 0.25 * lift
        f.paint(_segment(x, y, 0.62 * side, -0.7 - 0.1 * lift, tip_x, tip_y, 0.022), c["stick"])
        f.paint(_circle(x, y, tip_x, tip_y, 0.035), c["stick"])


def _siren_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy in p["streetlights"]:
        f.glow(0.5 * np.exp(-(_length(f.gx - cx, f.gy - cy) / 0.05) ** 2), p["colours"]["street"])
    f.paint(_box(f.x, f.y, 0, 0.62, 0.95, 0.32, radius=0.15), p["colours"]["roof"])


def _siren_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    x, y = f.x, f.y
    red = 0.5 + 0.5 * math.cos(2 * math.pi * p["flash_rate"] * t + p["flash_phase"])  # red and blue alternate
    for cx, on, bright, dim in ((-0.32, red, c["red"], c["dim_red"]), (0.32, 1 - red, c["blue"], c["dim_blue"])):
        f.glow(0.85 * on * np.exp(-(_length(x - cx, y - 0.1) / p["glow"]) ** 2), bright)
        f.paint(_ellipse(x, y, cx, 0.12, 0.24, 0.17), dim + on * (bright - dim))
    f.paint(_box(x, y, 0, 0.23, 0.62, 0.07, radius=0.03), c["bar"])


def _spiral(x: np.ndarray, y: np.ndarray, apart: float, spin: float) -> np.ndarray:
    """Distance to the nearest arm of an Archimedean spiral whose arms are `apart` apart."""
    angle = (np.arctan2(y, x) + spin) % (2 * math.pi)
    arms = _length(x, y) / apart - angle / (2 * math.pi)
    return np.abs(arms - np.round(arms)) * apart


def _wind_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    for y0, amplitude, frequency, phase, speed in p["streams"]:  # streamlines drifting sideways
        curve = y0 + amplitude * np.sin(math.pi * frequency * f.gx + (phase - speed * t))
        f.paint(np.abs(f.gy - curve) - 0.014, c["stream"], 0.8, grid=True)
    for cx, cy, radius, spin in p["swirls"]:
        fade = np.clip(1.2 - _length(f.x - cx, f.y - cy) / radius, 0, 1)
        f.paint(_spiral(f.x - cx, f.y - cy, radius / 3, spin * t) - 0.02, c["swirl"], fade)
    for x0, y0, speed, phase in p["leaves"]:  # leaves blown across the frame
        lx = (x0 + speed * t + 1.2) % 2.4 - 1.2
        ly = y0 + 0.05 * math.sin(3 * t + phase)
        f.paint(_ellipse(f.gx, f.gy, lx, ly, 0.045, 0.02, angle=2 * t + phase), c["leaf"], grid=True)


def _hand(x: np.ndarray, y: np.ndarray, angle: float, length: float, width: float) -> np.ndarray:
    """A clock hand from the centre; `angle` clockwise from 12 o'clock."""
    return _segment(x, y, 0, 0, length * math.sin(angle), -length * math.cos(angle), width)


def _clock_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    for row in p["grain"]:  # wood grain of the wall
        f.paint(np.abs(f.gy - row - 0.01 * np.sin(7 * f.gx + row * 9)) - 0.004, c["grain"], 0.6, grid=True)
    x, y, radius = f.x, f.y, p["radius"]
    f.paint(_circle(x, y, 0.05, 0.06, radius + 0.06), c["shadow"], 0.4)
    f.paint(_circle(x, y, 0, 0, radius + 0.06), c["rim"])
    f.paint(_circle(x, y, 0, 0, radius), c["face"])
    # Hour marks, the quarters longer: the angular distance to the nearest mark, times the radius.
    angle = np.arctan2(x, -y)
    nearest = np.round(angle / (math.pi / 6))
    r = _length(x, y)
    sideways = np.abs(angle - nearest * math.pi / 6) * r
    inner = np.where(nearest % 3 == 0, 0.72, 0.82) * radius
    f.paint(np.maximum(sideways - 0.012, np.maximum(inner - r, r - 0.93 * radius)), c["marks"])
    f.paint(_hand(x, y, p["hour"], 0.5 * radius, 0.035), c["marks"])
    f.paint(_hand(x, y, p["minute"], 0.8 * radius, 0.024), c["marks"])


def _clock_moving(f: _Frame, p: dict, t: float) -> None:
    second = 2 * math.pi * math.floor(p["second"] + t / p["tick"]) / 60  # the hand jumps once per tick
    f.paint(_hand(f.x, f.y, second, 0.88 * p["radius"], 0.01), p["colours"]["second"])
    f.paint(_circle(f.x, f.y, 0, 0, 0.035), p["colours"]["second"])


def _arcs(f: _Frame, p: dict, cx: float, cy: float, t: float, colour, facing: float = 1.0) -> None:
    """Sound waves: three arcs spreading from (cx, cy) towards `facing` (1 = right), fading outwards."""
    for k in range(3):
        radius = 0.12 + 0.12 * ((k + p["wave_rate"] * t) % 3)
        r = _length(f.x - cx, f.y - cy)
        ahead = (f.x - cx) * facing - 0.5 * np.abs(f.y - cy)
        f.paint(np.maximum(np.abs(r - radius) - 0.015, -ahead), colour, max(0.0, 1.0 - radius / 0.5))


def _thunder_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy, rx, ry in p["clouds"]:
        f.paint(_ellipse(f.gx, f.gy, cx, cy, rx, ry), p["colours"]["cloud"], 0.9, grid=True)
    hills = 0.55 + 0.12 * np.sin(3 * f.gx + p["hill_phase"]) + 0.05 * np.sin(7 * f.gx)
    f.paint(hills - f.gy, p["colours"]["hills"], grid=True)


def _thunder_moving(f: _Frame, p: dict, t: float) -> None:
    flash = max(0.0, math.cos(2 * math.pi * p["flash_rate"] * t + p["flash_phase"])) ** 3  # the bolt flickers
    f.glow(0.35 * flash * np.exp(-(_length(f.gx - p["points"][0][0], f.gy + 0.8) / 0.9) ** 2), p["colours"]["glow"])
    for (ax, ay), (bx, by) in zip(p["points"][:-1], p["points"][1:]):
        f.paint(_segment(f.x, f.y, ax, ay, bx, by, 0.025), p["colours"]["bolt"], 0.3 + 0.7 * flash)


def _dog_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    x, y = f.x * p["facing"], f.y
    bark = 0.5 + 0.5 * math.sin(2 * math.pi * p["bark_rate"] * t + p["bark_phase"])  # the mouth opens and shuts
    wag = 0.4 * math.sin(2 * math.pi * p["wag_rate"] * t)
    for leg in (-0.28, -0.15, 0.12, 0.25):
        f.paint(_segment(x, y, leg, 0.1, leg, 0.45, 0.04), c["fur_dark"])
    f.paint(_segment(x, y, -0.38, -0.02, -0.55, -0.2 + wag * 0.2, 0.03), c["fur_dark"])  # tail
    f.paint(_ellipse(x, y, 0, 0.05, 0.42, 0.17), c["fur"])
    f.paint(_circle(x, y, 0.42, -0.18, 0.15), c["fur"])
    f.paint(_ellipse(x, y, 0.33, -0.3, 0.05, 0.12, angle=0.3), c["fur_dark"])  # ear
    f.paint(_ellipse(x, y, 0.58, -0.15 - 0.02 * bark, 0.1, 0.045), c["fur"])  # snout, upper jaw
    f.paint(_ellipse(x, y, 0.55, -0.06 + 0.06 * bark, 0.08, 0.03, angle=0.3 * bark), c["fur_dark"])  # lower jaw
    f.paint(_circle(x, y, 0.67, -0.17, 0.03), c["nose"])
    f.paint(_circle(x, y, 0.46, -0.24, 0.022), c["eye"])
    if bark > 0.5:
        f.paint(_ellipse(x, y, 0.58, -0.09, 0.04, 0.02), c["tongue"])


def _footsteps_backdrop(f: _Frame, p: dict) -> None:
    for cx, cy, r in p["pebbles"]:
        f.paint(_circle(f.gx, f.gy, cx, cy, r), p["colours"]["pebble"], 0.8, grid=True)
    for k, (cx, cy) in enumerate(p["prints"]):  # the prints of earlier steps
        f.paint(_ellipse(f.x, f.y, cx, cy, 0.06, 0.13, angle=0.1 * (-1) ** k), p["colours"]["print"], 0.7)


def _footsteps_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    phase = (t / p["interval"]) % 2.0
    for side, offset in ((-0.18, 0.0), (0.18, 1.0)):  # left and right foot take turns to lift
        lift = max(0.0, math.sin(math.pi * ((phase - offset) % 2.0))) if (phase - offset) % 2.0 < 1.0 else 0.0
        x, y = f.x - side, f.y + 0.15 + 0.25 * lift
        f.paint(_box(x, y, 0, -0.55, 0.08, 0.45), c["trouser"])
        f.paint(_ellipse(x, y, 0.02, 0.0, 0.13, 0.08), c["shoe"])
        f.paint(_box(x, y, 0.02, 0.07, 0.13, 0.02, radius=0.01), c["sole"])


def _stream_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    centre = p["bend"] * np.sin(2.2 * f.gy + p["bend_phase"])
    f.paint(np.abs(f.gx - centre) - p["width"], c["water"], grid=True)
    for cx, cy, rx, ry in p["stones"]:
        f.paint(_ellipse(f.gx, f.gy, cx, cy, rx, ry), _mix(c["stone"], c["stone_dark"], (f.gy - cy) / ry), grid=True)


def _stream_moving(f: _Frame, p: dict, t: float) -> None:
    centre = p["bend"] * np.sin(2.2 * f.gy + p["bend_phase"])
    inside = np.abs(f.gx - centre) - p["width"]
    ripples = np.abs(np.sin(14 * f.gy + 5 * np.sin(6 * f.gx) - p["flow"] * t)) - 0.12  # foam lines flowing down
    f.paint(np.maximum(inside, ripples / 14), p["colours"]["foam"], 0.6, grid=True)


def _fire_backdrop(f: _Frame, p: dict) -> None:
    c = p["colours"]
    f.glow(0.4 * np.exp(-(_length(f.x, f.y - 0.1) / 0.7) ** 2), c["ember"])
    for angle in (-0.35, 0.35):
        f.paint(_box(f.x, f.y, 0, 0.45, 0.5, 0.07, angle=angle, radius=0.05), c["log"])
    f.paint(_ellipse(f.x, f.y, 0, 0.45, 0.09, 0.07), c["log_end"])


def _fire_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    for k, (cx, height, rate, phase) in enumerate(p["flames"]):
        flicker = 1.0 + 0.25 * math.sin(2 * math.pi * rate * t + phase)
        sway = 0.05 * math.sin(2 * math.pi * rate * 0.7 * t + phase)
        for colour, scale in ((c["outer"], 1.0), (c["inner"], 0.55)):
            h = height * flicker * scale
            f.paint(_ellipse(f.x, f.y, cx + sway, 0.38 - h, 0.1 * scale + 0.04, h, angle=sway), colour, 0.9)


def _phone_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    ringing = ((t + p["ring_offset"]) % p["cycle"]) < p["ring"]
    shake = 0.025 * math.sin(2 * math.pi * 9.3 * t) if ringing else 0.0  # it rattles while it rings
    x, y = f.x + shake, f.y
    f.paint(_segment(x, y, 0.42, 0.3, 0.75, 0.7, 0.015), c["cord"])
    f.paint(_box(x, y, 0, 0.25, 0.4, 0.22, radius=0.08), _mix(c["body"], c["body_dark"], (y - 0.1) * 3))
    f.paint(_circle(x, y, 0, 0.22, 0.15), c["dial"])
    for k in range(10):
        angle = 2 * math.pi * k / 10
        f.paint(_circle(x, y, 0.1 * math.cos(angle), 0.22 + 0.1 * math.sin(angle), 0.02), c["ring"])
    lift = 0.04 if ringing and math.sin(2 * math.pi * 9.3 * t) > 0 else 0.0
    f.paint(_box(x, y, 0, -0.12 - lift, 0.45, 0.06, radius=0.05), c["body"])  # the handset on its cradle
    for side in (-1, 1):
        f.paint(_ellipse(x, y, 0.38 * side, -0.08 - lift, 0.1, 0.07), c["body_dark"])
    if ringing:
        _arcs(f, p, 0.45, -0.3, t, c["ring"])
        _arcs(f, p, -0.45, -0.3, t, c["ring"], facing=-1.0)


def _horn_backdrop(f: _Frame, p: dict) -> None:
    f.paint(-0.35 - (f.gy - 0.4), p["colours"]["bottom"], grid=True)
    for x0 in np.arange(-1.2, 1.2, 0.5) + p["lane_offset"]:
        f.paint(_box(f.gx, f.gy, x0, 0.78, 0.12, 0.015), p["colours"]["lane"], grid=True)


def _horn_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    x, y = f.x * p["facing"] - 0.1 * math.sin(0.6 * t + p["drive_phase"]), f.y
    f.paint(_box(x, y, 0, 0.3, 0.62, 0.16, radius=0.06), _mix(c["car"], c["car_dark"], (y - 0.2) * 4))
    f.paint(_box(x, y, -0.05, 0.06, 0.36, 0.13, radius=0.08), c["car"])
    for wx in (-0.2, 0.12):
        f.paint(_box(x, y, wx, 0.06, 0.13, 0.08, radius=0.03), c["window"])
    for wx in (-0.38, 0.38):
        f.paint(_circle(x, y, wx, 0.46, 0.11), c["wheel"])
    if ((t + p["honk_phase"]) % p["honk_cycle"]) < 0.6 * p["honk_cycle"]:
        _arcs(f, p, 0.66, 0.25, t, c["honk"])


def _whistle_backdrop(f: _Frame, p: dict) -> None:
    # A referee's shirt: broad black stripes on yellow.
    stripes = np.abs(((f.x + p["stripe_offset"]) / 0.36) % 1.0 - 0.5) - 0.25
    f.paint(stripes * 0.36, p["colours"]["line"])


def _whistle_moving(f: _Frame, p: dict, t: float) -> None:
    c = p["colours"]
    bob = 0.03 * math.sin(2 * math.pi * 0.7 * t)
    x, y = f.x, f.y - bob
    f.paint(np.abs(_ellipse(x, y, -0.35, -0.45, 0.3, 0.45)) - 0.015, c["cord"])  # the lanyard
    f.paint(_circle(x, y, -0.1, 0.1, 0.26), _mix(c["metal"], c["metal_dark"], (y - 0.1) * 2 + 0.5))
    f.paint(_box(x, y, 0.28, -0.05, 0.3, 0.1, radius=0.03), c["metal"])
    f.paint(_box(x, y, 0.2, -0.15, 0.08, 0.03), c["metal_dark"])  # the slot
    if ((t + p["blast_phase"]) % p["blast_cycle"]) < 0.5 * p["blast_cycle"]:
        _arcs(f, p, 0.6, -0.05, t, c["blast"])


_SCENES: dict[str, tuple[Callable[[_Frame, dict], None], Callable[[_Frame, dict, float], None]]] = {
    "rain": (_rain_backdrop, _rain_moving), "bell": (_bell_backdrop, _bell_moving),
    "bird": (_bird_backdrop, _bird_moving), "engine": (_nothing, _engine_moving),
    "drum": (_drum_backdrop, _drum_moving), "siren": (_siren_backdrop, _siren_moving),
    "wind": (_nothing, _wind_moving), "clock": (_clock_backdrop, _clock_moving),
    "thunder": (_thunder_backdrop, _thunder_moving), "dog": (_nothing, _dog_moving),
    "footsteps": (_footsteps_backdrop, _footsteps_moving), "stream": (_stream_backdrop, _stream_moving),
    "fire": (_fire_backdrop, _fire_moving), "phone": (_nothing, _phone_moving),
    "horn": (_horn_backdrop, _horn_moving), "whistle": (_whistle_backdrop, _whistle_moving),
}


def _class_params(label: str, rng: np.random.Generator) -> dict:
    """The class-specific random choices of one clip's scene (the layout of its décor and its motion).

    Periodic motions (flaps, flashes, hits, spokes) avoid whole cycles per second: `preprocess`
    samples about one frame a second, and a whole number of cycles would freeze the picture."""
    u = rng.uniform
    if label == "rain":
        return dict(clouds=[(u(-1, 1), u(-1.05, -0.7), u(0.3, 0.6), u(0.12, 0.22)) for _ in range(5)],
                    ground_y=u(0.6, 0.75), slant=u(0.2, 0.5), spacing=u(0.05, 0.08), period=u(0.35, 0.6),
                    length=u(0.08, 0.18), speed=u(1.2, 2.2), width=u(0.006, 0.011),
                    phases=u(0, 1, 80), offsets=u(-0.3, 0.3, 80),
                    ripples=[(u(-0.7, 0.7), u(0.78, 0.92), u(0, 1)) for _ in range(3)])
    if label == "bell":
        return dict(spots=[(u(-1, 1), u(-1, 1), u(0.1, 0.3)) for _ in range(5)], swing=u(0.08, 0.3),
                    swing_rate=u(0.4, 0.9), swing_phase=u(0, 2 * math.pi), width=u(0.9, 1.1))
    if label == "bird":
        return dict(leaves=[(u(-1.1, 1.1), u(-1.1, 1.1), u(0.08, 0.2), u(0.04, 0.1), u(0, math.pi), u(0, 1))
                            for _ in range(14)],
                    facing=1.0 if rng.random() < 0.5 else -1.0, branch_slope=u(-0.15, 0.15),
                    flap_rate=u(1.2, 1.8), flap_phase=u(0, 2 * math.pi), walk_rate=u(0.1, 0.3),
                    walk_phase=u(0, 2 * math.pi))
    if label == "engine":
        return dict(shake=u(0.006, 0.015), shake_rate=u(7, 13), spin=u(2.3, 3.8), cylinders=int(rng.integers(3, 5)))
    if label == "drum":
        return dict(spot_x=u(-0.5, 0.5), aspect=u(0.25, 0.35), hit_rate=u(1.2, 1.8), hit_phases=u(0, math.pi, 2))
    if label == "siren":
        return dict(streetlights=[(u(-1, 1), u(-1, -0.2)) for _ in range(6)], flash_rate=u(1.2, 1.8),
                    flash_phase=u(0, 2 * math.pi), glow=u(0.35, 0.55))
    if label == "wind":
        return dict(streams=[(u(-0.9, 0.9), u(0.03, 0.1), u(1, 3), u(0, 2 * math.pi), u(1, 3)) for _ in range(5)],
                    swirls=[(u(-0.6, 0.6), u(-0.6, 0.6), u(0.25, 0.45), u(0.5, 1.5))
                            for _ in range(int(rng.integers(2, 4)))],
                    leaves=[(u(-1.2, 1.2), u(-0.8, 0.8), u(0.4, 0.9), u(0, 2 * math.pi)) for _ in range(4)])
    if label == "clock":
        return dict(grain=u(-1, 1, 12), radius=u(0.55, 0.68), hour=u(0, 2 * math.pi), minute=u(0, 2 * math.pi),
                    second=u(0, 60), tick=u(0.5, 1.0))
    waves = dict(wave_rate=u(1.2, 1.8))
    if label == "thunder":
        points = [(u(-0.4, 0.4), -0.9)]
        for _ in range(5):
            points.append((points[-1][0] + u(-0.25, 0.25), points[-1][1] + u(0.2, 0.3)))
        return dict(clouds=[(u(-1, 1), u(-1.05, -0.6), u(0.3, 0.7), u(0.12, 0.25)) for _ in range(6)],
                    hill_phase=u(0, 2 * math.pi), points=points, flash_rate=u(1.2, 1.8), flash_phase=u(0, 2 * math.pi))
    if label == "dog":
        return dict(facing=1.0 if rng.random() < 0.5 else -1.0, bark_rate=u(1.2, 1.8), bark_phase=u(0, 2 * math.pi),
                    wag_rate=u(2.2, 3.4))
    if label == "footsteps":
        return dict(pebbles=[(u(-1, 1), u(-1, 1), u(0.01, 0.03)) for _ in range(60)],
                    prints=[(u(-0.5, 0.5), u(-0.8, 0.8)) for _ in range(4)], interval=u(0.4, 0.7))
    if label == "stream":
        return dict(bend=u(0.1, 0.3), bend_phase=u(0, 2 * math.pi), width=u(0.3, 0.45), flow=u(4, 8),
                    stones=[(u(-1, 1), u(-1, 1), u(0.06, 0.14), u(0.04, 0.09)) for _ in range(7)])
    if label == "fire":
        return dict(flames=[(u(-0.25, 0.25), u(0.2, 0.38), u(1.2, 2.8), u(0, 2 * math.pi))
                            for _ in range(int(rng.integers(3, 6)))])
    if label == "phone":
        ring = u(0.3, 0.5)  # the mobile ring of the sound track: 0.3-0.5 s on, 0.15-0.3 s off
        return dict(ring_offset=u(0, 1), ring=ring, cycle=ring + u(0.15, 0.3), **waves)
    if label == "horn":
        return dict(facing=1.0 if rng.random() < 0.5 else -1.0, lane_offset=u(0, 0.5), drive_phase=u(0, 2 * math.pi),
                    honk_phase=u(0, 2), honk_cycle=u(1.2, 2.2), **waves)
    return dict(stripe_offset=u(0, 0.36), blast_phase=u(0, 2), blast_cycle=u(1.2, 2.2), **waves)


def scene_params(label: str, rng: np.random.Generator) -> dict:
    """One clip's picture parameters: jittered placement, colour shades, background texture and
    the class's own choices. Pure data; `render_frame` turns it into frames at any time and size."""
    class_index(label)
    shade = rng.uniform(0.85, 1.15)  # one brightness for the whole clip, then a tint per colour
    colours = {name: np.clip(np.asarray(base, dtype=np.float32) * shade + rng.normal(0, 10, 3), 0, 255)
               for name, base in _PALETTES[label].items()}
    return dict(label=label, dx=rng.uniform(-0.15, 0.15), dy=rng.uniform(-0.12, 0.12), scale=rng.uniform(0.8, 1.15),
                angle=rng.uniform(-0.2, 0.2), colours=colours,
                texture=rng.standard_normal((12, 12)).astype(np.float32) * rng.uniform(4, 12),
                **_class_params(label, rng))


def _frame(image: np.ndarray, params: dict, size: int) -> _Frame:
    """A canvas over `image` [3, H, W] with the clip's placement (shift, rotation, scale) applied."""
    gx, gy = _grid(size)
    x, y = _rotate(gx - params["dx"], gy - params["dy"], -params["angle"])
    scale = params["scale"]
    return _Frame(image, gx, gy, x / scale, y / scale, 2.0 / size / scale, 2.0 / size)


def draw_backdrop(params: dict, size: int) -> np.ndarray:
    """What never moves in the clip: gradient, grey grain and the class's static décor, float32 [3, H, W]."""
    gx, gy = _grid(size)
    colours = params["colours"]
    image = _mix(colours["top"], colours["bottom"], (gy + 1) / 2)
    upsample = _upsampler(params["texture"].shape[0], size)
    image += upsample @ params["texture"] @ upsample.T  # the same grain in every plane
    _SCENES[params["label"]][0](_frame(image, params, size), params)
    return image


def draw_moving(params: dict, backdrop: np.ndarray, t: float) -> np.ndarray:
    frame = _frame(backdrop.copy(), params, backdrop.shape[-1])
    _SCENES[params["label"]][1](frame, params, float(t))
    pixels = np.clip(frame.image + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(1, 2, 0))  # [3, H, W] -> [H, W, 3]


def render_frame(label: str, params: dict, t: float, size: int = SIZE) -> np.ndarray:
    """The clip's picture at time `t` seconds: RGB uint8 [size, size, 3]."""
    class_index(label)
    if params.get("label") != label:
        raise ClipsonicError(f"scene parameters are for {params.get('label')!r}, not {label!r}")
    return draw_moving(params, draw_backdrop(params, size), t)


def class_picture(label: str, seed: int = 0, size: int = SIZE) -> np.ndarray:
    """A picture of `label` (RGB uint8 [size, size, 3]) from a random stream no clip uses: an
    unseen but typical image query."""
    return render_frame(label, scene_params(label, clip_rng(seed, label, 0, PICTURE_STREAM)), 0.5, size)


