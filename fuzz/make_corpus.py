"""Writes the seed corpora, once; the files are committed and this is kept to say how they were made
(``python -m fuzz.make_corpus``; it rewrites them the same way, bit for bit with the same Pillow).

decode_image/: small real images in every format the server accepts (JPEG, PNG, WebP, BMP, TIFF,
GIF) and the modes and features that take different paths: grayscale, palette (with transparency),
alpha, 16-bit, CMYK, progressive, EXIF orientation, animation and pages, one JPEG large enough for
draft mode; and tests/data/malformed/ (Pillow raised outside its OSError family on them).
v2_request/, vision_request/: serialized valid requests for the tiny models (fuzz/tiny_models.py),
one per shape of request the servicers translate.
It also writes the hand-made regression inputs (``crafted_regressions``) into fuzz/regressions/.
"""

import io
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from attnserve.api.inference.v2 import grpc_predict_v2_pb2 as v2
from attnserve.api.v1 import vision_pb2 as vision
from fuzz.tiny_models import CLASSIFIER, DETECTOR

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
MALFORMED = HERE.parent / "tests" / "data" / "malformed"
ORIENTATION = 0x0112


def picture(width: int = 24, height: int = 16, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a block and a little noise: compresses small, decodes to varied pixels."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], -1)
    rgb[height // 4 : height // 2, width // 4 : width // 2] = (250, 40, 40)
    noise = np.random.default_rng(seed).integers(0, 12, rgb.shape)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def save(im: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def oriented(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def images() -> dict[str, bytes]:
    rgb = Image.fromarray(picture())
    gray = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.arange(0, 240, 10, np.uint8), (16, 1))))
    palette = rgb.quantize(16)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    sixteen = Image.fromarray(picture()[..., 0].astype(np.uint16) * 257)  # I;16
    frames = [Image.fromarray(picture(seed=s)).quantize(8) for s in range(3)]
    big = Image.fromarray(np.repeat(np.repeat(picture(40, 30), 8, 0), 8, 1))  # 320×240: draft mode
    out = {
        "rgb.jpg": save(rgb, "JPEG", quality=80),
        "gray.jpg": save(gray, "JPEG", quality=80),
        "cmyk.jpg": save(rgb.convert("CMYK"), "JPEG", quality=80),
        "progressive.jpg": save(rgb, "JPEG", quality=70, progressive=True),
        "subsampling_444.jpg": save(rgb, "JPEG", quality=90, subsampling=0),
        "exif_rotate90.jpg": save(rgb, "JPEG", quality=70, exif=oriented(6)),
        "exif_mirror_rotate.jpg": save(rgb, "JPEG", quality=70, exif=oriented(5)),
        "exif_rotate180.jpg": save(rgb, "JPEG", quality=70, exif=oriented(3)),
        "draft_320x240.jpg": save(big, "JPEG", quality=40),
        "rgb.png": save(rgb, "PNG"),
        "gray.png": save(gray, "PNG"),
        "bilevel.png": save(gray.convert("1"), "PNG"),
        "rgba.png": save(rgba, "PNG"),
        "gray_alpha.png": save(rgba.convert("LA"), "PNG"),
        "palette.png": save(palette, "PNG"),
        "palette_transparent.png": save(transparent, "PNG", transparency=0),
        "sixteen_bit_gray.png": save(sixteen, "PNG"),
        "exif_rotate270.png": save(rgb, "PNG", exif=oriented(8)),
        "animated.png": save(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=50),
        "lossy.webp": save(rgb, "WEBP", quality=60),
        "lossless_alpha.webp": save(rgba, "WEBP", lossless=True),
        "animated.webp": save(
            frames[0].convert("RGB"),
            "WEBP",
            save_all=True,
            append_images=[f.convert("RGB") for f in frames[1:]],
            duration=50,
        ),
        "exif_rotate90.webp": save(rgb, "WEBP", quality=60, exif=oriented(6)),
        "rgb.bmp": save(rgb.resize((12, 8)), "BMP"),
        "palette.bmp": save(palette.resize((12, 8)), "BMP"),
        "bilevel.bmp": save(gray.convert("1"), "BMP"),
        "rgba.bmp": save(rgba.resize((12, 8)), "BMP"),
        "rgb.tif": save(rgb.resize((12, 8)), "TIFF"),
        "lzw.tif": save(rgb, "TIFF", compression="tiff_lzw"),
        "deflate_rgba.tif": save(rgba, "TIFF", compression="tiff_adobe_deflate"),
        "packbits_gray.tif": save(gray, "TIFF", compression="packbits"),
        "jpeg.tif": save(rgb, "TIFF", compression="jpeg"),
        "cmyk.tif": save(rgb.convert("CMYK").resize((12, 8)), "TIFF", compression="tiff_lzw"),
        "sixteen_bit_gray.tif": save(sixteen, "TIFF", compression="tiff_lzw"),
        "int32.tif": save(sixteen.convert("I"), "TIFF", compression="tiff_lzw"),
        "float.tif": save(gray.convert("F"), "TIFF", compression="tiff_lzw"),
        "exif_rotate90.tif": save(rgb.resize((12, 8)), "TIFF", exif=oriented(6)),
        "pages.tif": save(frames[0], "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw"),
        "palette.gif": save(palette, "GIF"),
        "transparent.gif": save(transparent, "GIF", transparency=0),
        "animated.gif": save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
    }
    return out


def length_prefixed(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def pixels(height: int, width: int, count: int = 1) -> np.ndarray:
    return (np.random.default_rng(count).random((count, 3, height, width)) * 0.999).astype(np.float32)


def v2_requests(seeds: dict[str, bytes]) -> dict[str, bytes]:
    png, jpeg = seeds["rgb.png"], seeds["rgb.jpg"]
    Request = v2.ModelInferRequest

    def request(model: str, datatype: str, shape: list[int], version: str = "", **kwargs) -> Request:
        r = Request(model_name=model, model_version=version, id="fuzz-seed", **kwargs)
        r.inputs.add(name="images", datatype=datatype, shape=shape)
        return r

    raw = request(CLASSIFIER, "FP32", [1, 3, 16, 24], raw_input_contents=[pixels(16, 24).tobytes()])
    typed = request(CLASSIFIER, "FP32", [1, 3, 16, 24], "2")
    typed.inputs[0].contents.fp32_contents.extend(pixels(16, 24).ravel().tolist())
    outputs = request(CLASSIFIER, "FP32", [1, 3, 16, 16], "1", raw_input_contents=[pixels(16, 16).tobytes()])
    outputs.outputs.add(name="probabilities").parameters["classification"].int64_param = 3
    outputs.outputs.add(name="cam")
    outputs.outputs.add(name="se_gate")
    raw_bytes = request(CLASSIFIER, "BYTES", [2], raw_input_contents=[length_prefixed([png, jpeg])])
    typed_bytes = request(DETECTOR, "BYTES", [1])
    typed_bytes.inputs[0].contents.bytes_contents.append(png)
    detector = request(
        DETECTOR, "FP32", [2, 3, 16, 16], "1", raw_input_contents=[pixels(16, 16, 2).tobytes()]
    )
    detector.outputs.add(name="boxes")
    detector.outputs.add(name="classes")
    detector.outputs.add(name="scores").parameters["classification"].int64_param = 2
    requests = {
        "fp32_raw": raw,
        "fp32_typed_version2": typed,
        "fp32_outputs_classification": outputs,
        "bytes_raw_two_images": raw_bytes,
        "bytes_typed_detector": typed_bytes,
        "fp32_detector_outputs": detector,
    }
    return {f"{name}.pb": r.SerializeToString() for name, r in requests.items()}


def vision_requests(seeds: dict[str, bytes]) -> dict[str, bytes]:
    E, G = vision.MapEncoding, vision.MapGeometry
    raw = vision.Image(raw=vision.RawImage(rgb=picture(6, 4).tobytes(), height=4, width=6))

    def image(name: str) -> vision.Image:
        return vision.Image(encoded=seeds[name])

    requests = {
        "classify": vision.ClassifyRequest(model=CLASSIFIER, images=[image("rgb.jpg")]),
        "classify_version2_top_k_maps": vision.ClassifyRequest(
            model=CLASSIFIER,
            version=2,
            images=[image("rgb.png"), raw],
            top_k=3,
            score_threshold=0.1,
            maps=vision.MapOptions(select=["cam", "spatial"], encoding=E.MAP_ENCODING_PNG_HEATMAP),
        ),
        "classify_all_maps_original": vision.ClassifyRequest(
            model=CLASSIFIER,
            images=[image("exif_rotate90.jpg")],
            maps=vision.MapOptions(
                select=["all"], encoding=E.MAP_ENCODING_PNG_OVERLAY, geometry=G.MAP_GEOMETRY_ORIGINAL_IMAGE
            ),
        ),
        "classify_float16_original": vision.ClassifyRequest(
            model=CLASSIFIER,
            version=1,
            images=[image("gray.png")],
            maps=vision.MapOptions(
                select=["se_gate", "block0_heads", "coord_h"],
                encoding=E.MAP_ENCODING_FLOAT16,
                geometry=G.MAP_GEOMETRY_ORIGINAL_IMAGE,
            ),
        ),
        "detect": vision.DetectRequest(model=DETECTOR, images=[image("rgb.png"), image("palette.gif")]),
        "detect_threshold_maps": vision.DetectRequest(
            model=DETECTOR,
            version=1,
            images=[raw],
            score_threshold=0.05,
            max_detections=3,
            maps=vision.MapOptions(select=["spatial"], geometry=G.MAP_GEOMETRY_ORIGINAL_IMAGE),
        ),
    }
    return {f"{name}.pb": r.SerializeToString() for name, r in requests.items()}


def crafted_regressions() -> dict[str, bytes]:
    """Regression inputs made by hand, each a smaller, safer twin of what a fuzz run found (or of
    what review found and the harness confirmed); fuzzer-found inputs are committed as they were."""
    thin = save(Image.new("L", (1, 150_000), 128), "PNG", optimize=True)  # 150 000 pixels
    thin += b"\0" * ((1 - len(thin)) % 6)  # after IEND, ignored; the length picks center_crop
    gif = b"GIF89a" + struct.pack("<HHBBB", 24, 16, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    gif += b"\x21\xf9\x04\x08\0\0\0\0"  # graphic control: dispose to background
    gif += b"\x2c" + struct.pack("<HHHHB", 0, 0, 16384, 16384, 0)  # a frame far outside the screen
    gif += b"\x02\x02\x4c\x01\x00\x3b"
    shape = v2.ModelInferRequest(model_name=CLASSIFIER, model_version="1", raw_input_contents=[b""])
    shape.inputs.add(name="images", datatype="FP32", shape=[2**40, 2**40, 0, 1])
    return {
        "decode_image/thin_png_center_crop.png": thin,
        "decode_image/gif_frame_far_outside_its_screen.gif": gif,
        "v2_request/fp32_shape_of_no_elements_but_huge_dimensions.pb": shape.SerializeToString(),
    }


def write(folder: Path, files: dict[str, bytes]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def main() -> None:
    seeds = images()
    write(CORPUS / "decode_image", seeds)
    for path in sorted(MALFORMED.glob("*")):
        shutil.copyfile(path, CORPUS / "decode_image" / f"malformed_{path.name}")
    write(CORPUS / "v2_request", v2_requests(seeds))
    write(CORPUS / "vision_request", vision_requests(seeds))
    for name, data in crafted_regressions().items():
        (HERE / "regressions" / name).parent.mkdir(parents=True, exist_ok=True)
        (HERE / "regressions" / name).write_bytes(data)
    for folder in sorted(CORPUS.iterdir()):
        sizes = [p.stat().st_size for p in folder.iterdir()]
        print(f"{folder.name}: {len(sizes)} files, {min(sizes)}–{max(sizes)} bytes")


if __name__ == "__main__":
    main()
