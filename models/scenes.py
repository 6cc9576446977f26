"""Procedural, seed-deterministic scenes of six shape classes on cluttered, textured backgrounds.

Appearance is varied broadly (background texture, colour and contrast, object size from 8 % to 45 %
of the image side, rotation, aspect, filled or outlined, solid, gradient or patterned fills, several
objects, distractor strokes, occluders, blur, noise, JPEG) so models learn the shapes rather than this
generator's quirks. Boxes are exact: each object is drawn into its own mask first, and its box is the
mask's bounding box (amodal: occluders drawn later do not shrink it).

Every range lives in a ``Style``. ``TRAINING`` is what training, validation and the usual evaluation
draw; ``SHIFTED`` (``shifted_scene``) lies outside it on purpose — objects up to 60 % of the side,
and in each scene some of: background textures, drop shadows, tone curves, salt-and-pepper noise
and JPEG qualities that training never sees — and only evaluation calls it, to measure how models
hold on images this generator's training style did not make.
"""

import io
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring")


@dataclass
class Scene:
    image: np.ndarray  # H×W×3 uint8, RGB
    boxes: np.ndarray  # M×4 float32, x1 y1 x2 y2 in pixels, x2/y2 exclusive
    labels: np.ndarray  # M int64, indices into CLASS_NAMES


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _luminance(rgb: np.ndarray | tuple[int, int, int]) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


# ---------------------------------------------------------------- backgrounds
# Each texture is a size×size field in [0, 1] that blends two colours; training and the shifted
# style draw from different lists.
Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _flat(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    return np.zeros_like(xx)


def _linear_gradient(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    return (xx * math.cos(a) + yy * math.sin(a)) % 1.0


def _stripes(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    a, f = rng.uniform(0, math.pi), rng.uniform(3, 14)
    return 0.5 + 0.5 * np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a)))


def _checkerboard(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    n = rng.integers(3, 12)
    return ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)


def _resized(field: np.ndarray, size: int, resample: int = Image.BICUBIC) -> np.ndarray:
    return (
        np.asarray(Image.fromarray((field * 255).astype(np.uint8)).resize((size, size), resample), np.float32)
        / 255
    )


def _value_noise(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    cells = int(rng.integers(3, 9))
    return _resized(rng.random((cells, cells)), xx.shape[0])


def _blotches(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    t = rng.random(xx.shape).astype(np.float32)
    t = np.asarray(
        Image.fromarray((t * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(2, 6))),
        np.float32,
    )
    return (t - t.min()) / max(1.0, float(np.ptp(t)))


def _waves(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Two plane waves at random angles and frequencies, interfering."""
    a, f = rng.uniform(0, math.pi, 2), rng.uniform(2, 10, 2)
    t = sum(
        np.sin(2 * math.pi * fi * (xx * math.cos(ai) + yy * math.sin(ai)))
        for ai, fi in zip(a, f, strict=True)
    )
    return 0.5 + 0.25 * t


def _plaid(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Bands of two widths crossing at right angles, tilted."""
    a, (f1, f2) = rng.uniform(0, math.pi / 2), rng.uniform(2, 9, 2)
    u, v = xx * math.cos(a) + yy * math.sin(a), yy * math.cos(a) - xx * math.sin(a)
    return np.maximum((u * f1) % 1 < 0.35, (v * f2) % 1 < 0.35).astype(np.float32)


def _rings(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Concentric rings about a random centre (shifted style only)."""
    cx, cy, f = *rng.uniform(0, 1, 2), rng.uniform(4, 12)
    return 0.5 + 0.5 * np.sin(2 * math.pi * f * np.hypot(xx - cx, yy - cy))


def _mosaic(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Tiles of random brightness, hard-edged (shifted style only)."""
    cells = int(rng.integers(4, 10))
    return _resized(rng.random((cells, cells)), xx.shape[0], Image.NEAREST)


def _fractal_noise(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Several octaves of value noise, fine grain included (shifted style only)."""
    t = sum(_resized(rng.random((c, c)), xx.shape[0]) / (i + 1) for i, c in enumerate((4, 9, 20, 44)))
    return (t - t.min()) / max(1e-6, float(np.ptp(t)))


def _dots(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A lattice of round dots (shifted style only)."""
    n, r = rng.uniform(5, 12), rng.uniform(0.2, 0.4)
    return (np.hypot((xx * n) % 1 - 0.5, (yy * n) % 1 - 0.5) < r).astype(np.float32)


def _background(rng: np.random.Generator, size: int, textures: tuple[Texture, ...]) -> np.ndarray:
    c1, c2 = np.array(_random_colour(rng), np.float32), np.array(_random_colour(rng), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    t = textures[int(rng.integers(0, len(textures)))](rng, xx, yy)
    t = t * rng.uniform(0.2, 1.0)  # texture contrast
    img = c1[None, None] * (1 - t[..., None]) + c2[None, None] * t[..., None]
    img += rng.normal(0, rng.uniform(0, 10), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_strokes(rng: np.random.Generator, img: Image.Image, count: int) -> None:
    """Distractor strokes: straight lines, short arcs and polylines, none a closed class shape."""
    draw = ImageDraw.Draw(img)
    s = img.size[0]
    for _ in range(count):
        colour, width = _random_colour(rng), int(rng.integers(1, 4))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.line([tuple(rng.uniform(0, s, 2)), tuple(rng.uniform(0, s, 2))], fill=colour, width=width)
        elif kind == 1:
            cx, cy, r = *rng.uniform(0, s, 2), rng.uniform(s * 0.05, s * 0.3)
            start = rng.uniform(0, 360)
            draw.arc(
                [cx - r, cy - r, cx + r, cy + r],
                start,
                start + rng.uniform(30, 150),
                fill=colour,
                width=width,
            )
        else:
            pts = np.cumsum(rng.normal(0, s * 0.08, (int(rng.integers(3, 7)), 2)), axis=0) + rng.uniform(
                0, s, 2
            )
            draw.line([tuple(p) for p in pts], fill=colour, width=width)


# ---------------------------------------------------------------- shapes
def _regular_polygon(n: int, r: float, rot: float) -> np.ndarray:
    a = rot + np.arange(n) * 2 * math.pi / n
    return np.stack([np.cos(a), np.sin(a)], 1) * r


def _star(r: float, rot: float, rng: np.random.Generator) -> np.ndarray:
    points = int(rng.integers(5, 7))
    inner = rng.uniform(0.38, 0.5)
    a = rot + np.arange(2 * points) * math.pi / points
    radius = np.where(np.arange(2 * points) % 2 == 0, r, r * inner)
    return np.stack([np.cos(a) * radius, np.sin(a) * radius], 1)


def _cross(r: float, rot: float, rng: np.random.Generator) -> np.ndarray:
    t = r * rng.uniform(0.28, 0.42)  # half the arm thickness
    pts = np.array(
        [
            (-t, -r),
            (t, -r),
            (t, -t),
            (r, -t),
            (r, t),
            (t, t),
            (t, r),
            (-t, r),
            (-t, t),
            (-r, t),
            (-r, -t),
            (-t, -t),
        ],
        np.float64,
    )
    c, s = math.cos(rot), math.sin(rot)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_mask(
    rng: np.random.Generator, label: int, size: int, cx: float, cy: float, r: float
) -> Image.Image:
    """The object's own mask (L mode), filled or outlined."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    filled = rng.random() < 0.6
    width = max(2, int(round(r * rng.uniform(0.1, 0.18))))
    rot = rng.uniform(0, 2 * math.pi)
    aspect = math.exp(rng.uniform(-0.28, 0.28))  # anisotropic stretch up to 1.33:1, then rotate
    name = CLASS_NAMES[label]
    if name in ("circle", "ring"):
        rx, ry = r * aspect, r / aspect
        outer = [cx - rx, cy - ry, cx + rx, cy + ry]
        if name == "circle":
            draw.ellipse(outer, fill=255) if filled else draw.ellipse(outer, outline=255, width=width)
        else:
            k = rng.uniform(0.45, 0.65)  # inner radius ratio: a thick band, unlike an outlined circle
            inner = [cx - rx * k, cy - ry * k, cx + rx * k, cy + ry * k]
            if filled:
                draw.ellipse(outer, fill=255)
                draw.ellipse(inner, fill=0)
            else:  # outlined ring: both edges of the band
                draw.ellipse(outer, outline=255, width=width)
                draw.ellipse(inner, outline=255, width=width)
        return mask
    if name == "square":
        pts = _regular_polygon(4, r * 1.1, rot)
    elif name == "triangle":
        pts = _regular_polygon(3, r * 1.15, rot)
    elif name == "star":
        pts = _star(r * 1.15, rot, rng)
    else:
        pts = _cross(r, rot, rng)
    pts = pts * np.array([aspect, 1 / aspect]) + np.array([cx, cy])
    poly = [tuple(p) for p in pts]
    if filled:
        draw.polygon(poly, fill=255)
    else:
        draw.line(poly + [poly[0], poly[1]], fill=255, width=width, joint="curve")
    return mask


def _fill_layer(rng: np.random.Generator, size: int, base: tuple[int, int, int]) -> Image.Image:
    """Solid colour, a gradient between two colours of similar brightness, or a two-tone pattern."""
    kind = rng.random()
    if kind < 0.55:
        return Image.new("RGB", (size, size), base)
    other = np.clip(np.array(base) + rng.normal(0, 50, 3), 0, 255).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind < 0.8:
        t = _linear_gradient(rng, xx, yy)[..., None]
    else:  # stripes or checks inside the shape, its outline still the class's
        t = (_stripes if rng.random() < 0.5 else _checkerboard)(rng, xx * 3, yy * 3)[..., None]
    return Image.fromarray((np.array(base, np.float32) * (1 - t) + other * t).astype(np.uint8))


def _contrasting_colour(
    rng: np.random.Generator, background: np.ndarray, contrast: float
) -> tuple[int, int, int]:
    """A colour whose brightness differs from the local background's by ``contrast`` (0–255) or more."""
    bg = _luminance(background.reshape(-1, 3).mean(0))
    best = _random_colour(rng)
    for _ in range(20):
        if abs(_luminance(best) - bg) > contrast:
            break
        best = _random_colour(rng)
    return best


def _place(
    rng: np.random.Generator, size: int, r: float, taken: list[np.ndarray]
) -> tuple[float, float] | None:
    margin = r * 0.9
    for _ in range(30):
        cx, cy = rng.uniform(margin, size - margin, 2)
        box = np.array([cx - r, cy - r, cx + r, cy + r])
        if all(_iou(box, t) < 0.05 for t in taken):
            return float(cx), float(cy)
    return None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _occlude(rng: np.random.Generator, img: Image.Image, box: np.ndarray) -> None:
    """A small rectangle or ellipse over part of the object, hiding at most about a sixth of it."""
    w, h = box[2] - box[0], box[3] - box[1]
    ow, oh = w * rng.uniform(0.15, 0.4), h * rng.uniform(0.15, 0.4)
    ox = rng.uniform(box[0] - ow / 2, box[2] - ow / 2)
    oy = rng.uniform(box[1] - oh / 2, box[3] - oh / 2)
    shape = [ox, oy, ox + ow, oy + oh]
    draw = ImageDraw.Draw(img)
    colour = _random_colour(rng)
    draw.rectangle(shape, fill=colour) if rng.random() < 0.5 else draw.ellipse(shape, fill=colour)


def _shadow(rng: np.random.Generator, img: Image.Image, mask: Image.Image) -> Image.Image:
    """A soft dark copy of the object's mask, offset down and to one side (shifted style only)."""
    offset = max(1, int(round(img.size[0] * rng.uniform(0.015, 0.04))))
    shadow = mask.transform(mask.size, Image.AFFINE, (1, 0, -offset * rng.choice((-1, 1)), 0, 1, -offset))
    shadow = shadow.filter(ImageFilter.GaussianBlur(offset / 2)).point(lambda v: int(v * 0.6))
    return Image.composite(Image.new("RGB", img.size, (0, 0, 0)), img, shadow)


@dataclass(frozen=True)
class Style:
    """The range of every appearance variable a scene draws from."""

    textures: tuple[Texture, ...]
    classification_diameter: tuple[float, float]  # object diameter, as a share of the image side
    detection_diameter: tuple[float, float]
    detection_count: tuple[int, int]  # objects per detection scene, inclusive
    instances: tuple[float, ...]  # chance of 1, 2, … objects (all of one class) in a classification scene
    contrast: tuple[float, float]  # least brightness difference between object and background
    jpeg_quality: tuple[int, int]  # inclusive
    noise: float  # largest Gaussian noise σ, in 0–255 levels
    salt_and_pepper: tuple[float, float]  # share of pixels set to black or white
    shadow: float  # chance of a drop shadow under each object
    gamma: tuple[float, float]  # tone curve exponent's |log| range; (0, 0) leaves tones alone
    # each scene takes each group of appearance ranges below from this style or, with even odds, from
    # ``mixed_with`` (at least one group from this one): one shift at a time or several, not all always
    mixed_with: "Style | None" = None


# the appearance ranges a ``mixed_with`` style can stand in for, in groups that shift together
APPEARANCE_GROUPS = (("textures",), ("jpeg_quality",), ("noise", "salt_and_pepper"), ("shadow",), ("gamma",))


def _scene_style(rng: np.random.Generator, style: Style) -> Style:
    if style.mixed_with is None:
        return style
    while True:
        own = rng.random(len(APPEARANCE_GROUPS)) < 0.5
        if own.any():
            break
    borrowed = {
        f: getattr(style.mixed_with, f)
        for g, o in zip(APPEARANCE_GROUPS, own, strict=True)
        if not o
        for f in g
    }
    return replace(style, mixed_with=None, **borrowed)


TRAINING = Style(
    textures=(_flat, _linear_gradient, _stripes, _checkerboard, _value_noise, _blotches, _waves, _plaid),
    classification_diameter=(0.08, 0.45),
    detection_diameter=(0.08, 0.45),
    detection_count=(1, 6),
    instances=(0.75, 0.18, 0.07),
    contrast=(35, 70),
    jpeg_quality=(20, 95),
    noise=18,
    salt_and_pepper=(0, 0.004),
    shadow=0,
    gamma=(0, 0.25),
)
# Outside TRAINING on purpose: objects up to 60 % of the side (about a third of them larger than any
# in training), and in each scene some of: four textures, JPEG qualities, impulse noise, tone curves
# beyond training's, and drop shadows training never draws. Sizes start inside the training range so
# the image centre is not a free hit for the pointing game (only large objects would all cover it).
# Only evaluation uses it.
SHIFTED = Style(
    textures=(_rings, _mosaic, _fractal_noise, _dots),
    classification_diameter=(0.12, 0.6),
    detection_diameter=(0.1, 0.55),
    detection_count=(1, 5),
    instances=(1.0,),
    contrast=(35, 70),
    jpeg_quality=(8, 18),
    noise=6,
    salt_and_pepper=(0.01, 0.03),
    shadow=0.6,
    gamma=(0.35, 0.6),
    mixed_with=TRAINING,
)


# Below this diameter (a share of the side) an object would drown in what a scene does to larger ones:
# it gets no occluder and no strokes over it, more contrast, and the blur shrinks with it, so every
# label stays one a person could give
SALIENT_DIAMETER = 0.2


def _finish(rng: np.random.Generator, img: Image.Image, style: Style, salience: float) -> np.ndarray:
    """Blur (up to σ 1.6 px at 96 px, times ``salience`` in (0, 1]), tone curve, sensor noise and JPEG."""
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.3 + 1.3 * salience) * img.size[0] / 96))
    arr = np.asarray(img, np.float32)
    if style.gamma[1] > 0:
        gamma = math.exp(rng.uniform(*style.gamma) * rng.choice((-1, 1)))
        arr = 255 * (arr / 255) ** gamma
    arr = np.clip(arr + rng.normal(0, rng.uniform(0, style.noise), arr.shape), 0, 255).astype(np.uint8)
    if style.salt_and_pepper[1] > 0:
        hit = rng.random(arr.shape[:2]) < rng.uniform(*style.salt_and_pepper)
        arr[hit] = rng.choice(np.array([0, 255], np.uint8), int(hit.sum()))[:, None]
    buf = io.BytesIO()
    quality = int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1))
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _render(
    rng: np.random.Generator, size: int, radii: list[float], style: Style, label: int | None = None
) -> Scene:
    """Objects of the given radii (each of a random class, or all of ``label``) placed where they fit."""
    style = _scene_style(rng, style)
    img = Image.fromarray(_background(rng, size, style.textures))
    _draw_strokes(rng, img, int(rng.integers(2, 9)))
    boxes, labels, taken = [], [], []
    salience = 1.0  # of the least salient object drawn
    for r in radii:
        centre = _place(rng, size, r, taken)
        if centre is None:
            continue
        object_label = int(rng.integers(0, len(CLASS_NAMES))) if label is None else label
        mask = _shape_mask(rng, object_label, size, *centre, r)
        bbox = mask.getbbox()
        if bbox is None:
            continue
        box = np.array(bbox, np.float32)
        x1, y1, x2, y2 = (int(v) for v in bbox)
        visible = min(1.0, 2 * r / size / SALIENT_DIAMETER)
        salience = min(salience, visible)
        if rng.random() < style.shadow:
            img = _shadow(rng, img, mask)
        contrast = rng.uniform(*style.contrast) + 40 * (1 - visible)
        colour = _contrasting_colour(rng, np.asarray(img)[y1:y2, x1:x2], contrast)
        img = Image.composite(_fill_layer(rng, size, colour), img, mask)
        if visible == 1 and rng.random() < 0.35:
            _occlude(rng, img, box)
        taken.append(box)
        boxes.append(box)
        labels.append(object_label)
    if salience == 1 and rng.random() < 0.5:
        _draw_strokes(rng, img, int(rng.integers(1, 4)))  # strokes over objects too
    return Scene(
        image=_finish(rng, img, style, salience),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
    )


def _classification(rng: np.random.Generator, size: int, style: Style) -> Scene:
    """One to a few objects of one class (the scene's label), anywhere in the image."""
    label = int(rng.integers(0, len(CLASS_NAMES)))
    count = 1 + int(rng.choice(len(style.instances), p=style.instances))
    while True:
        radii = list(rng.uniform(*style.classification_diameter, count) * size / 2)
        scene = _render(rng, size, radii, style, label)
        if len(scene.labels):
            return scene


def _detection(rng: np.random.Generator, size: int, style: Style) -> Scene:
    count = int(rng.integers(style.detection_count[0], style.detection_count[1] + 1))
    while True:
        scene = _render(rng, size, list(rng.uniform(*style.detection_diameter, count) * size / 2), style)
        if len(scene.labels):
            return scene


SCENE_KINDS = ("classification", "detection")


def classification_scene(seed: int, index: int, size: int = 96) -> Scene:
    """Training style: one object (sometimes two or three of one class), diameter 8–45 % of the side."""
    return _classification(_rng(seed, index), size, TRAINING)


def detection_scene(seed: int, index: int, size: int = 128) -> Scene:
    """Training style: one to six objects of diameter 8–45 % of the side, overlapping little."""
    return _detection(_rng(seed, index), size, TRAINING)


def shifted_scene(kind: str, seed: int, index: int, size: int) -> Scene:
    """A ``kind`` scene in the SHIFTED style, outside every training range; for evaluation only."""
    rng = _rng(seed, index)
    return (_classification if kind == "classification" else _detection)(rng, size, SHIFTED)


def _make(args: tuple) -> Scene:
    kind, seed, index, size, shifted = args
    if shifted:
        return shifted_scene(kind, seed, index, size)
    return (classification_scene if kind == "classification" else detection_scene)(seed, index, size)


def generate(
    kind: str, seed: int, count: int, size: int, workers: int = 2, shifted: bool = False
) -> list[Scene]:
    """``count`` scenes of ``kind`` ("classification" or "detection"); scene i depends only on (seed, i).

    ``shifted`` draws them in the SHIFTED style instead of the training one."""
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}")
    jobs = [(kind, seed, i, size, shifted) for i in range(count)]
    if workers <= 1 or count < 64:
        return [_make(j) for j in jobs]
    with Pool(workers) as pool:
        return pool.map(_make, jobs, chunksize=64)
