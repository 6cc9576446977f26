"""What a PyTorch forward pass computes inside a user's model, module by module.

``GateRecorder`` records every gate activation (sigmoid, hard sigmoid, softmax, their in-place forms,
and a hard sigmoid written as arithmetic: ``relu6(x + 3) / 6``, ``clamp(x + 3, 0, 6) / 6``) and every
``nn.MultiheadAttention``'s per-head probabilities, with the module it ran in, so maps discovered in
the ONNX graph can be checked against PyTorch's own values. Each value is copied when computed, so
in-place operations after it (``relu_``, ``+=``, ``mul_``) cannot change what the map is checked
against.

``ExplicitAttention`` makes attention's probabilities exist at all: ``F.scaled_dot_product_attention``
is fused (no probabilities in PyTorch, a fused ``Attention`` op at ONNX opset ≥ 23), and
``nn.MultiheadAttention`` skips them on its fast path or when called with ``need_weights=False``. Inside
it, scaled dot-product attention is computed as ``softmax(q kᵀ · scale + mask) v`` and every
``nn.MultiheadAttention`` computes its per-head weights (handing the caller what it asked for), both for
the export and for the recording. The fp32 parity check then proves the rewritten graph equal to the
model as written.
"""

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

GATE_FUNCTIONS = {
    torch.sigmoid,
    torch.Tensor.sigmoid,
    torch.sigmoid_,
    torch.Tensor.sigmoid_,
    torch.special.expit,
    F.hardsigmoid,
    torch.softmax,
    torch.Tensor.softmax,
    F.softmax,
}


# clamps to [0, 6]: divided by 6 (or times 1/6) they are a hard sigmoid written out
SIX_CLAMPS = {F.relu6, F.hardtanh, torch.clamp, torch.Tensor.clamp, torch.clip, torch.Tensor.clip}
SCALINGS = {"div": 6.0, "__truediv__": 6.0, "true_divide": 6.0, "mul": 1 / 6, "__mul__": 1 / 6}


def _clamps_to_six(func: Callable[..., Any], args: tuple, kwargs: dict) -> bool:
    if func is F.relu6:
        return True
    if func is F.hardtanh:
        low, high = (list(args[1:3]) + [kwargs.get("min_val", -1.0), kwargs.get("max_val", 1.0)])[:2]
    else:
        low, high = (list(args[1:3]) + [kwargs.get("min"), kwargs.get("max")])[:2]
    return low == 0 and high == 6


@dataclass
class GateRecord:
    scope: str  # module path as in named_modules(); "" for the model's own forward
    value: torch.Tensor


class _ScopedMode(TorchFunctionMode):
    """A torch function mode that knows which module of ``model`` each call runs in."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._scopes: list[str] = []
        self._handles = []
        for name, module in model.named_modules():
            if name:
                self._handles.append(module.register_forward_pre_hook(self._enter(name)))
                self._handles.append(module.register_forward_hook(self._leave))

    @property
    def scope(self) -> str:
        return self._scopes[-1] if self._scopes else ""

    def _enter(self, name: str) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            self._scopes.append(name)

        return hook

    def _leave(self, module: nn.Module, args: tuple, output: object) -> None:
        self._scopes.pop()

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return super().__exit__(*exc)


class GateRecorder(_ScopedMode):
    """``with GateRecorder(model) as rec: model(x)`` → ``rec.records`` in call order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.records: list[GateRecord] = []
        self._clamped: dict[int, torch.Tensor] = {}  # id → a [0, 6] clamp's output (kept alive)

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple[type, ...], args: tuple = (), kwargs: dict | None = None
    ):
        out = func(*args, **(kwargs or {}))
        if func in GATE_FUNCTIONS and isinstance(out, torch.Tensor):
            self.records.append(GateRecord(self.scope, out.detach().clone()))
        elif func in SIX_CLAMPS and _clamps_to_six(func, args, kwargs or {}):
            self._clamped[id(out)] = out
        elif _scales_clamp(func, args, self._clamped):
            self.records.append(GateRecord(self.scope, out.detach().clone()))
        elif func is F.multi_head_attention_forward and _per_head(out):
            # its softmax runs inside this one call, out of the mode's sight: record what it returns
            self.records.append(GateRecord(self.scope, out[1].detach().clone()))
        return out


def _scales_clamp(func: Callable[..., Any], args: tuple, clamped: dict[int, torch.Tensor]) -> bool:
    """Whether this is a [0, 6] clamp divided by 6 or times 1/6: a hard sigmoid's last step."""
    factor = SCALINGS.get(getattr(func, "__name__", ""))
    if factor is None or len(args) != 2:
        return False
    tensor, scalar = (args[0], args[1]) if id(args[0]) in clamped else (args[1], args[0])
    return id(tensor) in clamped and isinstance(scalar, (int, float)) and abs(scalar - factor) < 1e-6


def _per_head(out: object) -> bool:
    return isinstance(out, tuple) and isinstance(out[1], torch.Tensor) and out[1].dim() == 4


def explicit_scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (eval mode: no dropout) with its softmax written out."""
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    if enable_gqa:  # grouped-query attention: each key/value head serves several query heads
        key = key.repeat_interleave(query.shape[-3] // key.shape[-3], dim=-3)
        value = value.repeat_interleave(query.shape[-3] // value.shape[-3], dim=-3)
    scores = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        attn_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        scores = (
            scores.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
        )
    return torch.softmax(scores, dim=-1) @ value


_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


class ExplicitAttention(_ScopedMode):
    """``with ExplicitAttention(model) as rewrite: export or run`` → ``rewrite.sources``: the modules
    whose attention it wrote out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.sources: list[str] = []
        self._asked: list[dict] = []  # what each running nn.MultiheadAttention's caller asked for
        for name, module in model.named_modules():
            if isinstance(module, nn.MultiheadAttention):
                self._handles.append(
                    module.register_forward_pre_hook(self._weights_on(name), with_kwargs=True)
                )
                self._handles.append(module.register_forward_hook(self._weights_as_asked, with_kwargs=True))

    def __enter__(self):
        self._fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel returns no per-head weights
        return super().__enter__()

    def __exit__(self, *exc):
        torch.backends.mha.set_fastpath_enabled(self._fastpath)
        return super().__exit__(*exc)

    def _note(self, source: str) -> None:
        if source not in self.sources:
            self.sources.append(source)

    def _weights_on(self, name: str) -> Callable[[nn.MultiheadAttention, tuple, dict], tuple[tuple, dict]]:
        def hook(module: nn.MultiheadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            bound = _MHA_SIGNATURE.bind(module, *args, **kwargs).arguments
            bound.pop("self")
            self._asked.append({k: bound.get(k, True) for k in ("need_weights", "average_attn_weights")})
            self._note(name)
            return (), {**bound, "need_weights": True, "average_attn_weights": False}

        return hook

    def _weights_as_asked(
        self,
        module: nn.MultiheadAttention,
        args: tuple,
        kwargs: dict,
        output: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        asked = self._asked.pop()
        attended, weights = output
        if not asked["need_weights"]:
            return attended, None
        return attended, weights.mean(dim=1) if asked["average_attn_weights"] else weights

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple[type, ...], args: tuple = (), kwargs: dict | None = None
    ):
        if func is F.scaled_dot_product_attention:
            self._note(self.scope)
            return explicit_scaled_dot_product_attention(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))
