"""Harness 2: bytes as the Open Inference Protocol's ModelInferRequest through the
InferenceServicer's translation (version string, FP32 and BYTES tensors, raw and typed contents,
requested outputs and the classification parameter) into the data plane's InferRequest and the whole
request path, the response serialized as gRPC would; and its name and version through ModelReady.
Bytes that are not a message (DecodeError) never reach the servicer: gRPC refuses them."""

from google.protobuf.message import DecodeError

from attnserve.api.inference.v2 import grpc_predict_v2_pb2 as pb
from attnserve.service.errors import ServiceError
from fuzz.plane import plane
from fuzz.proto_mutator import ProtoMutator
from fuzz.words import WORDS, images, tensors

mutator = ProtoMutator([pb.ModelInferRequest], WORDS, images() + tensors())


def check(data: bytes) -> None:
    """Raises only for a bug: anything but ServiceError."""
    p = plane()
    try:
        request = pb.ModelInferRequest.FromString(data)
    except DecodeError:
        return
    ready = pb.ModelReadyRequest(name=request.model_name, version=request.model_version)
    p.run(p.v2.ModelReady(ready, None)).SerializeToString()
    try:
        response = p.run(p.v2._infer(request, None))
    except ServiceError:
        return
    finally:
        p.check_idle()
    response.SerializeToString()
