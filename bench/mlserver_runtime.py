"""The peer: a small custom MLServer runtime running the same ONNX model with ONNX Runtime. Loaded by
MLServer inside its own virtual environment (bench/peer.py), so it imports nothing from attnserve."""

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("BENCH_THREADS", "0"))
        self.session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        self.output = os.environ.get("BENCH_OUTPUT", "probabilities")
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (result,) = self.session.run([self.output], {"images": images})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(self.output, result)]
        )
