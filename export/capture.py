"""Record every gate activation (sigmoid, hard sigmoid, softmax) a PyTorch forward pass computes, with the
module it ran in, so maps discovered in the ONNX graph can be checked against PyTorch's own values."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

GATE_FUNCTIONS = {
    torch.sigmoid,
    torch.Tensor.sigmoid,
    torch.special.expit,
    F.hardsigmoid,
    torch.softmax,
    torch.Tensor.softmax,
    F.softmax,
}


@dataclass
class GateRecord:
    scope: str  # module path as in named_modules(); "" for the model's own forward
    value: torch.Tensor


class GateRecorder(TorchFunctionMode):
    """``with GateRecorder(model) as rec: model(x)`` → ``rec.records`` in call order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.records: list[GateRecord] = []
        self._scopes: list[str] = []
        self._handles = []
        for name, module in model.named_modules():
            if name:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, name: str):
        def hook(module, args):
            self._scopes.append(name)

        return hook

    def _leave(self, module, args, output):
        self._scopes.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in GATE_FUNCTIONS and isinstance(out, torch.Tensor):
            self.records.append(GateRecord(self._scopes[-1] if self._scopes else "", out.detach().clone()))
        return out

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)
