"""The attnserve.v1 vision API's messages into and out of the data plane's, shared by its gRPC front-end
(service/grpc/vision.py) and its HTTP one (service/http/vision.py, the same messages in proto3's JSON
mapping)."""

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.manifest import CLASSIFICATION, DETECTION
from attnserve.maps import ENCODINGS, FLOAT16, GEOMETRIES, MODEL_GRID
from attnserve.service.errors import invalid
from attnserve.service.messages import (
    EncodedMap,
    ImageInput,
    MapRequest,
    ModelDescription,
    Prediction,
    PredictRequest,
)


def classify_request(request: pb.ClassifyRequest, deadline: float | None) -> PredictRequest:
    return _predict_request(
        CLASSIFICATION,
        request,
        deadline,
        top_k=_optional(request, "top_k"),
        score_threshold=_optional(request, "score_threshold"),
    )


def detect_request(request: pb.DetectRequest, deadline: float | None) -> PredictRequest:
    return _predict_request(
        DETECTION,
        request,
        deadline,
        score_threshold=_optional(request, "score_threshold"),
        max_detections=_optional(request, "max_detections"),
    )


def _predict_request(
    task: str, request: pb.ClassifyRequest | pb.DetectRequest, deadline: float | None, **options
) -> PredictRequest:
    maps = map_request_of(request.maps)
    return PredictRequest(
        task, request.model, request.version, images_of(request), maps, deadline=deadline, **options
    )


def _optional(message: pb.ClassifyRequest | pb.DetectRequest, name: str) -> float | None:
    """An optional field's value, None when the request leaves it out (the server's default then)."""
    return getattr(message, name) if message.HasField(name) else None


def list_models(descriptions: list[ModelDescription]) -> pb.ListModelsResponse:
    return pb.ListModelsResponse(
        models=[
            pb.ModelVersions(name=d.manifest.name, versions=d.versions, task=d.manifest.task, ready=d.ready)
            for d in descriptions
        ]
    )


def model_info(described: ModelDescription) -> pb.ModelInfo:
    m = described.manifest
    return pb.ModelInfo(
        name=m.name,
        version=m.version,
        versions=described.versions,
        task=m.task,
        labels=m.labels,
        input_height=m.input.height,
        input_width=m.input.width,
        resize=m.input.resize,
        attention=[
            pb.AttentionOutput(name=a.name, kind=a.kind, source=a.source, shape=a.shape, stride=a.stride or 0)
            for a in m.attention
        ],
        precision=m.precision,
        provider=described.provider,
        exporter=m.exporter,
        sha256=m.sha256,
        warnings=described.warnings,
    )


def classify_response(prediction: Prediction) -> pb.ClassifyResponse:
    results = [
        pb.Classification(
            labels=[pb.ScoredLabel(class_id=s.class_id, label=s.label, score=s.score) for s in r.labels],
            maps=maps_of(r.maps),
            image_size=pb.ImageSize(height=r.height, width=r.width),
        )
        for r in prediction.results
    ]
    return pb.ClassifyResponse(results=results, **_common(prediction))


def detect_response(prediction: Prediction) -> pb.DetectResponse:
    results = [
        pb.DetectionResult(
            detections=[
                pb.Detection(
                    box=pb.Box(x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]),
                    class_id=d.class_id,
                    label=d.label,
                    score=d.score,
                )
                for d in r.detections
            ],
            maps=maps_of(r.maps),
            image_size=pb.ImageSize(height=r.height, width=r.width),
        )
        for r in prediction.results
    ]
    return pb.DetectResponse(results=results, **_common(prediction))


def images_of(request: pb.ClassifyRequest | pb.DetectRequest) -> list[ImageInput]:
    images = []
    for image in request.images:
        kind = image.WhichOneof("data")
        if kind == "encoded":
            images.append(ImageInput(encoded=image.encoded))
        elif kind == "raw":
            images.append(ImageInput(rgb=image.raw.rgb, height=image.raw.height, width=image.raw.width))
        else:
            images.append(ImageInput())
    return images


def map_request_of(options: pb.MapOptions) -> MapRequest:
    encoding = _name_of(pb.MapEncoding, options.encoding, "MAP_ENCODING_", ENCODINGS, FLOAT16)
    geometry = _name_of(pb.MapGeometry, options.geometry, "MAP_GEOMETRY_", GEOMETRIES, MODEL_GRID)
    return MapRequest(list(options.select), encoding, geometry)


def _name_of(enum: EnumTypeWrapper, value: int, prefix: str, names: tuple[str, ...], unspecified: str) -> str:
    """attnserve.maps' name for a wire enum value (attnserve/maps.py: the same name, upper case)."""
    name = enum.Name(value).removeprefix(prefix).lower() if value in enum.values() else ""
    if name == "unspecified":
        return unspecified
    if name not in names:
        raise invalid(f"unknown map {prefix.removeprefix('MAP_').rstrip('_').lower()} {value}")
    return name


def maps_of(encoded: list[EncodedMap]) -> list[pb.AttentionMap]:
    return [
        pb.AttentionMap(
            name=m.name,
            kind=m.kind,
            shape=m.shape,
            encoding=pb.MapEncoding.Value(f"MAP_ENCODING_{m.encoding.upper()}"),
            data=m.data,
            geometry=pb.MapGeometry.Value(f"MAP_GEOMETRY_{m.geometry.upper()}"),
            source=m.source,
        )
        for m in encoded
    ]


def _common(prediction: Prediction) -> dict:
    timing = pb.Timing(
        **{f"{stage}_us": round(seconds * 1e6) for stage, seconds in prediction.timing.items()}
    )
    return {
        "model": prediction.model,
        "version": prediction.version,
        "timing": timing,
        "request_id": prediction.request_id,
    }
