"""Harness 3: bytes as the vision API's ClassifyRequest and DetectRequest (both parses of the same
bytes, since the messages share most field numbers) through the VisionServicer's translation into
the data plane's PredictRequest and the whole request path, the response serialized as gRPC would.
Bytes that are not a message (DecodeError) never reach the servicer: gRPC refuses them."""

from google.protobuf.message import DecodeError

from attnserve.api.v1 import vision_pb2 as pb
from attnserve.service.errors import ServiceError
from fuzz.plane import plane
from fuzz.proto_mutator import ProtoMutator
from fuzz.words import WORDS, images

mutator = ProtoMutator([pb.ClassifyRequest, pb.DetectRequest], WORDS, images())


def check(data: bytes) -> None:
    """Raises only for a bug: anything but ServiceError."""
    p = plane()
    for message, call in ((pb.ClassifyRequest, p.vision._classify), (pb.DetectRequest, p.vision._detect)):
        try:
            request = message.FromString(data)
        except DecodeError:
            continue
        try:
            response = p.run(call(request, None))
        except ServiceError:
            continue
        finally:
            p.check_idle()
        response.SerializeToString()
