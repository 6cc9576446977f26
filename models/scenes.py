"""Procedural, seed-deterministic scenes of six shape classes on cluttered, textured backgrounds.

Appearance is varied broadly (background texture, colour, scale, rotation, aspect, filled or
outlined, gradient fills, distractor strokes, occluders, blur, noise, JPEG) so models learn the
shapes rather than this generator's quirks. Boxes are exact: each object is drawn into its own mask
first, and its box is the mask's bounding box (amodal: occluders drawn later do not shrink it).
"""

import io
import math
from dataclasses import dataclass
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


def _luminance(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


# ---------------------------------------------------------------- backgrounds
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(0, 6)
    c1, c2 = np.array(_random_colour(rng), np.float32), np.array(_random_colour(rng), np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # flat
        t = np.zeros((size, size), np.float32)
    elif kind == 1:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(a) + yy * math.sin(a)) % 1.0
    elif kind == 2:  # stripes
        a, f = rng.uniform(0, math.pi), rng.uniform(3, 14)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a)))
    elif kind == 3:  # checkerboard
        n = rng.integers(3, 12)
        t = ((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32)
    elif kind == 4:  # smooth value noise
        cells = int(rng.integers(3, 9))
        coarse = rng.random((cells, cells)).astype(np.float32)
        t = (
            np.asarray(
                Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                np.float32,
            )
            / 255
        )
    else:  # blotches
        t = rng.random((size, size)).astype(np.float32)
        t = np.asarray(
            Image.fromarray((t * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(2, 6))),
            np.float32,
        )
        t = (t - t.min()) / max(1.0, float(np.ptp(t)))
    t *= rng.uniform(0.2, 1.0)  # texture contrast
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
    aspect = rng.uniform(0.85, 1.15)  # mild anisotropic stretch, then rotate
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
    """Solid colour or a gradient between two colours of similar brightness."""
    if rng.random() < 0.7:
        return Image.new("RGB", (size, size), base)
    other = np.clip(np.array(base) + rng.normal(0, 50, 3), 0, 255)
    t = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    grad = np.array(base, np.float32) * (1 - t) + other.astype(np.float32) * t
    grad = np.repeat(grad, size, axis=0)
    if rng.random() < 0.5:
        grad = grad.transpose(1, 0, 2)
    return Image.fromarray(grad.astype(np.uint8))


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A colour whose brightness differs enough from the local background to be seen."""
    bg = _luminance(background.reshape(-1, 3).mean(0))
    best = _random_colour(rng)
    for _ in range(20):
        if abs(_luminance(best) - bg) > 60:
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
    """A small rectangle or ellipse over part of the object, hiding at most about a fifth of it."""
    w, h = box[2] - box[0], box[3] - box[1]
    ow, oh = w * rng.uniform(0.15, 0.35), h * rng.uniform(0.15, 0.35)
    ox = rng.uniform(box[0] - ow / 2, box[2] - ow / 2)
    oy = rng.uniform(box[1] - oh / 2, box[3] - oh / 2)
    shape = [ox, oy, ox + ow, oy + oh]
    draw = ImageDraw.Draw(img)
    colour = _random_colour(rng)
    draw.rectangle(shape, fill=colour) if rng.random() < 0.5 else draw.ellipse(shape, fill=colour)


def _finish(rng: np.random.Generator, img: Image.Image) -> np.ndarray:
    """Blur, sensor noise and JPEG compression."""
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.3)))
    arr = np.asarray(img, np.float32)
    arr = np.clip(arr + rng.normal(0, rng.uniform(0, 12), arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(rng.integers(30, 96)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _render(rng: np.random.Generator, size: int, radii: list[float]) -> Scene:
    img = Image.fromarray(_background(rng, size))
    _draw_strokes(rng, img, int(rng.integers(2, 9)))
    boxes, labels, taken = [], [], []
    for r in radii:
        centre = _place(rng, size, r, taken)
        if centre is None:
            continue
        label = int(rng.integers(0, len(CLASS_NAMES)))
        mask = _shape_mask(rng, label, size, *centre, r)
        bbox = mask.getbbox()
        if bbox is None:
            continue
        box = np.array(bbox, np.float32)
        x1, y1, x2, y2 = (int(v) for v in bbox)
        colour = _contrasting_colour(rng, np.asarray(img)[y1:y2, x1:x2])
        img = Image.composite(_fill_layer(rng, size, colour), img, mask)
        if rng.random() < 0.3:
            _occlude(rng, img, box)
        taken.append(box)
        boxes.append(box)
        labels.append(label)
    if rng.random() < 0.5:
        _draw_strokes(rng, img, int(rng.integers(1, 4)))  # strokes over objects too
    return Scene(
        image=_finish(rng, img),
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        labels=np.array(labels, np.int64),
    )


def classification_scene(seed: int, index: int, size: int = 96) -> Scene:
    """One object, its diameter about 24–52 % of the image side, anywhere in the image."""
    rng = _rng(seed, index)
    while True:
        scene = _render(rng, size, [rng.uniform(0.12, 0.26) * size])
        if len(scene.labels) == 1:
            return scene


def detection_scene(seed: int, index: int, size: int = 128) -> Scene:
    """One to six objects of radius 7–26 px at 128 px, overlapping little, with exact boxes."""
    rng = _rng(seed, index)
    count = int(rng.integers(1, 7))
    return _render(rng, size, list(rng.uniform(0.055, 0.2, count) * size))


def _make(args: tuple) -> Scene:
    kind, seed, index, size = args
    return (classification_scene if kind == "classification" else detection_scene)(seed, index, size)


def generate(kind: str, seed: int, count: int, size: int, workers: int = 2) -> list[Scene]:
    """``count`` scenes of ``kind`` ("classification" or "detection"); scene i depends only on (seed, i)."""
    if kind not in ("classification", "detection"):
        raise ValueError(f"unknown scene kind {kind!r}")
    jobs = [(kind, seed, i, size) for i in range(count)]
    if workers <= 1 or count < 64:
        return [_make(j) for j in jobs]
    with Pool(workers) as pool:
        return pool.map(_make, jobs, chunksize=64)
