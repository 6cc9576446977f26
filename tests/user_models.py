"""Attention models as users write them, in the styles of the papers' public reference code (not ours):
the exporter has to find their gates without any help. Each ``build_*`` is a --factory target.

Small on purpose (32×32 inputs, a few channels): the tests export each one.
"""

import torch
import torch.nn.functional as F
from torch import nn

from attnserve.demo import demo_checkpoint
from attnserve.models.zoo import load_checkpoint


# --- SE, torchvision/timm style: 1×1 convs and nn.Sigmoid inside nn.Sequential ------------------------
class SEModule(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, channels // reduction, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.fc(x)


# --- CBAM, reference-code style: F.sigmoid, unsqueeze/expand_as, pooling with the map's own size -----
class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class ChannelGate(nn.Module):
    def __init__(self, gate_channels, reduction_ratio=4):
        super().__init__()
        self.mlp = nn.Sequential(
            Flatten(),
            nn.Linear(gate_channels, gate_channels // reduction_ratio),
            nn.ReLU(),
            nn.Linear(gate_channels // reduction_ratio, gate_channels),
        )

    def forward(self, x):
        avg_pool = F.avg_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        max_pool = F.max_pool2d(x, (x.size(2), x.size(3)), stride=(x.size(2), x.size(3)))
        channel_att_sum = self.mlp(avg_pool) + self.mlp(max_pool)
        scale = F.sigmoid(channel_att_sum).unsqueeze(2).unsqueeze(3).expand_as(x)
        return x * scale


class ChannelPool(nn.Module):
    def forward(self, x):
        return torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)


class SpatialGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.compress = ChannelPool()
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3, bias=False), nn.BatchNorm2d(1))

    def forward(self, x):
        scale = F.sigmoid(self.spatial(self.compress(x)))
        return x * scale


class CBAM(nn.Module):
    def __init__(self, gate_channels):
        super().__init__()
        self.ChannelGate = ChannelGate(gate_channels)
        self.SpatialGate = SpatialGate()

    def forward(self, x):
        return self.SpatialGate(self.ChannelGate(x))


# --- ECA, official style: conv1d across channels, squeeze/transpose, nn.Sigmoid, expand_as -------------
class ECALayer(nn.Module):
    def __init__(self, channel, k_size=3):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        y = self.avg_pool(x)
        y = self.conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        y = self.sigmoid(y)
        return x * y.expand_as(x)


# --- BAM, reference style: 1 + sigmoid(channel * spatial), a full N×C×H×W gate -----------------------
class BAMChannel(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.gate_c = nn.Sequential(
            nn.Linear(channels, channels // reduction), nn.ReLU(), nn.Linear(channels // reduction, channels)
        )

    def forward(self, x):
        pooled = x.mean((2, 3))
        return self.gate_c(pooled).unsqueeze(2).unsqueeze(3).expand_as(x)


class BAMSpatial(nn.Module):
    def __init__(self, channels, reduction=4, dilation=2):
        super().__init__()
        mid = channels // reduction
        self.gate_s = nn.Sequential(
            nn.Conv2d(channels, mid, 1),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation),
            nn.ReLU(),
            nn.Conv2d(mid, 1, 1),
        )

    def forward(self, x):
        return self.gate_s(x).expand_as(x)


class BAM(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.channel_att = BAMChannel(channels)
        self.spatial_att = BAMSpatial(channels)

    def forward(self, in_tensor):
        att = 1 + F.sigmoid(self.channel_att(in_tensor) * self.spatial_att(in_tensor))
        return att * in_tensor


# --- Coordinate attention, official style: AdaptiveAvgPool2d((None, 1)), h_swish, .sigmoid() --------
class h_sigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU6(inplace=True)

    def forward(self, x):
        return self.relu(x + 3) / 6


class h_swish(nn.Module):
    def __init__(self):
        super().__init__()
        self.sigmoid = h_sigmoid()

    def forward(self, x):
        return x * self.sigmoid(x)


class CoordAtt(nn.Module):
    def __init__(self, inp, oup, reduction=8, joint=False):
        super().__init__()
        self.joint = joint  # x * (a_w * a_h): the two gates meet before the feature
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        mip = max(8, inp // reduction)
        self.conv1 = nn.Conv2d(inp, mip, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.act = h_swish()
        self.conv_h = nn.Conv2d(mip, oup, kernel_size=1)
        self.conv_w = nn.Conv2d(mip, oup, kernel_size=1)

    def forward(self, x):
        identity = x
        n, c, h, w = x.size()
        x_h = self.pool_h(x)
        x_w = self.pool_w(x).permute(0, 1, 3, 2)
        y = self.act(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        x_h, x_w = torch.split(y, [h, w], dim=2)
        x_w = x_w.permute(0, 1, 3, 2)
        a_h = self.conv_h(x_h).sigmoid()
        a_w = self.conv_w(x_w).sigmoid()
        if self.joint:
            return identity * (a_w * a_h)
        return identity * a_w * a_h


# --- MobileNetV3-style SE: Linear layers, view, nn.Hardsigmoid -------------------------------------
class HardSE(nn.Module):
    def __init__(self, channels, reduction=4):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels),
            nn.Hardsigmoid(),
        )

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y


# --- spatial attention as a softmax over positions, rescaled so the mean weight is 1 ------------------
class SoftmaxSpatial(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        weights = torch.softmax(self.score(x).flatten(1), dim=1)  # N×(H·W)
        return x * (weights * (h * w)).view(n, 1, h, w)


# --- in-place code: nn.ReLU(inplace=True), y.sigmoid_(), torch.sigmoid_(g), out *= y, y += x -----------
class InplaceSE(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, max(2, channels // 4), 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(max(2, channels // 4), channels, 1)

    def forward(self, x):
        y = self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        y.sigmoid_()
        out = x.clone()
        out *= y
        return out


class InplaceSpatial(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x):
        g = self.conv(x)
        torch.sigmoid_(g)
        y = x * g
        y += x
        return y


# --- hard sigmoids written as arithmetic (MobileNetV3 ports) and as F.hardsigmoid --------------------
class HardGateSE(nn.Module):
    def __init__(self, channels, form):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.form = form

    def forward(self, x):
        y = self.fc(x.mean((2, 3), keepdim=True))
        if self.form == "relu6":
            return x * (F.relu6(y + 3) / 6)
        if self.form == "clamp":
            return x * (torch.clamp(y + 3, 0, 6) / 6)
        return x * F.hardsigmoid(y)


# --- gates scaled or offset: (1 + g) * x, x + x * g, torch.addcmul(x, x, g) ----------------------------
class OffsetSpatial(nn.Module):
    def __init__(self, channels, form):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 3, padding=1)
        self.form = form

    def forward(self, x):
        g = torch.sigmoid(self.conv(x))
        if self.form == "one_plus":
            return (1 + g) * x
        if self.form == "residual":
            return x + x * g
        return torch.addcmul(x, x, g)


# --- SimAM (Yang et al., ICML 2021), reference code: a parameter-free energy through a sigmoid -------
class SimAM(nn.Module):
    def __init__(self, channels, e_lambda=1e-4):
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x):
        b, c, h, w = x.size()
        n = w * h - 1
        x_minus_mu_square = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = (
            x_minus_mu_square / (4 * (x_minus_mu_square.sum(dim=[2, 3], keepdim=True) / n + self.e_lambda))
            + 0.5
        )
        return x * torch.sigmoid(y)


# --- one module gating a feature and its half-resolution copy (pyramid attention) -----------------------
class TwoScaleSpatial(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels, 1, 3, padding=1) for _ in range(2))

    def forward(self, x):
        small = F.avg_pool2d(x, 2)
        full = x * torch.sigmoid(self.convs[0](x))
        half = small * torch.sigmoid(self.convs[1](small))
        return full + F.interpolate(half, size=x.shape[2:], mode="nearest")


# --- GCNet's global context block (Cao et al. 2019), reference code: a softmax over positions pools ----
class ContextBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(channels, channels // 2, kernel_size=1),
            nn.LayerNorm([channels // 2, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, kernel_size=1),
        )

    def forward(self, x):
        batch, channel, height, width = x.size()
        input_x = x.view(batch, channel, height * width).unsqueeze(1)
        context_mask = self.conv_mask(x).view(batch, 1, height * width)
        context_mask = F.softmax(context_mask, dim=2).unsqueeze(-1)
        context = torch.matmul(input_x, context_mask).view(batch, channel, 1, 1)
        return x + self.channel_add_conv(context)


# --- a non-local block (Wang et al. 2018), embedded-Gaussian form: a softmax over position pairs ------------
class NonLocalBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        inter = channels // 2
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inter, 1) for _ in range(3))
        self.W = nn.Conv2d(inter, channels, 1)

    def forward(self, x):
        b, c, h, w = x.size()
        theta_x = self.theta(x).view(b, c // 2, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(b, c // 2, -1)
        f_div_c = F.softmax(torch.matmul(theta_x, phi_x), dim=-1)
        g_x = self.g(x).view(b, c // 2, -1).permute(0, 2, 1)
        y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous().view(b, c // 2, h, w)
        return x + self.W(y)


# --- triplet attention (Misra et al. 2021), reference code: two of its three gates in permuted frames,
# the (C, W) plane of x.permute(0, 2, 1, 3) and the (H, C) plane of x.permute(0, 3, 2, 1) ---------------
class ZPoolGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x):
        pooled = torch.cat((torch.max(x, 1)[0].unsqueeze(1), torch.mean(x, 1).unsqueeze(1)), dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class TripletAttention(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.cw, self.hc, self.hw = ZPoolGate(), ZPoolGate(), ZPoolGate()

    def forward(self, x):
        x_out1 = self.cw(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3).contiguous()
        x_out2 = self.hc(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1).contiguous()
        return 1 / 3 * (self.hw(x) + x_out1 + x_out2)


# --- a small ResNet-like host for any of them, with SiLU activations (x * sigmoid(x): not a gate) ------
class Block(nn.Module):
    def __init__(self, cin, cout, attention):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.SiLU()
        self.attention = attention(cout)

    def forward(self, x):
        return self.attention(self.act(self.bn(self.conv(x))))


class Net(nn.Module):
    def __init__(self, attention, num_classes=5, widths=(8, 16)):
        super().__init__()
        self.layer1 = Block(3, widths[0], attention)
        self.layer2 = Block(widths[0], widths[1], attention)
        self.fc = nn.Linear(widths[1], num_classes)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(x)).mean((2, 3)))


def _seeded(model: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in model.parameters():  # larger than default init, so gates are far from flat
        nn.init.normal_(p, std=0.5)
    return model.eval()


ATTENTIONS = {
    "se": SEModule,
    "cbam": CBAM,
    "eca": ECALayer,
    "bam": BAM,
    "coord": lambda c: CoordAtt(c, c),
    "coord_joint": lambda c: CoordAtt(c, c, joint=True),
    "hard_se": HardSE,
    "softmax_spatial": SoftmaxSpatial,
    "inplace_se": InplaceSE,
    "inplace_spatial": InplaceSpatial,
    "hard_relu6": lambda c: HardGateSE(c, "relu6"),
    "hard_clamp": lambda c: HardGateSE(c, "clamp"),
    "hard_function": lambda c: HardGateSE(c, "function"),
    "one_plus": lambda c: OffsetSpatial(c, "one_plus"),
    "residual_gate": lambda c: OffsetSpatial(c, "residual"),
    "addcmul": lambda c: OffsetSpatial(c, "addcmul"),
    "simam": SimAM,
    "two_scale": TwoScaleSpatial,
    "global_context": ContextBlock,
    "triplet": TripletAttention,
    "non_local": NonLocalBlock,
}


class GatedHead(Net):
    """A gate on the pooled embedding (feature re-weighting before the classifier): a gate, but not
    over the image, so no map discovery knows a layout for."""

    def __init__(self, attention, num_classes=5, widths=(8, 16)):
        super().__init__(attention, num_classes, widths)
        self.gate = nn.Linear(widths[1], widths[1])

    def forward(self, x):
        v = self.layer2(self.layer1(x)).mean((2, 3))
        return self.fc(v * torch.sigmoid(self.gate(v)))


class WideHead(nn.Module):
    """An SE-gated stem into a wide hidden layer: about 100 MB of weights, so that a test can see a
    model's memory come and go in the server's RSS."""

    def __init__(self, num_classes=5, hidden=6144):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.attention = SEModule(4, reduction=2)
        self.hidden = nn.Linear(4 * 32 * 32, hidden)
        self.fc = nn.Linear(hidden, num_classes)
        with torch.no_grad():  # small logits: long float32 sums stay inside the export's parity check
            self.hidden.weight.mul_(0.1)
            self.fc.weight.mul_(0.1)

    def forward(self, x):
        x = self.attention(F.relu(self.stem(x)))
        return self.fc(F.relu(self.hidden(x.flatten(1))))


def build_wide() -> nn.Module:
    torch.manual_seed(2)
    return WideHead().eval()


def build(attention: str = "se", num_classes: int = 5, gated_head: bool = False) -> nn.Module:
    return _seeded((GatedHead if gated_head else Net)(ATTENTIONS[attention], num_classes), 0)


# --- our own CBAM classifier as a user would hold it: logits only, no declared maps -----------------
class LogitsOnly(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["logits"]


def build_plain_cbam_classifier() -> nn.Module:
    model, _ = load_checkpoint(demo_checkpoint("cbam_classifier"))
    return LogitsOnly(model).eval()


# --- a user detector: decoded top-K as a (boxes, scores, labels) tuple -------------------------------
class TinyDetector(nn.Module):
    def __init__(self, num_classes=3, k=10):
        super().__init__()
        self.k = k
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.se = SEModule(8)
        self.heat = nn.Conv2d(8, num_classes, 1)
        self.size = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = self.se(self.body(x))
        heat = self.heat(f).sigmoid()
        peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat).float()  # a mask of the gate itself: no gate
        n, c, h, w = heat.shape
        scores, idx = peaks.flatten(1).topk(self.k, dim=1)
        labels = idx // (h * w)
        cell = idx % (h * w)
        cx, cy = (cell % w).float() * 2 + 1, (cell // w).float() * 2 + 1
        wh = torch.gather(self.size(f).exp().flatten(2), 2, cell.unsqueeze(1).expand(n, 2, self.k))
        boxes = torch.stack([cx - wh[:, 0], cy - wh[:, 1], cx + wh[:, 0], cy + wh[:, 1]], dim=2)
        return boxes, scores, labels


def build_detector() -> nn.Module:
    return _seeded(TinyDetector(), 1)


# --- models that defeat exporters --------------------------------------------------------------------
class DataDependentBranch(nn.Module):
    """A Python branch on a tensor's value: torch.export refuses it, TorchScript traces one branch."""

    def __init__(self):
        super().__init__()
        self.net = build("se")

    def forward(self, x):
        if x.mean() > -1.0:  # always true for images in [0, 1]
            x = x * 1.0
        return self.net(x)


def build_data_dependent() -> nn.Module:
    return DataDependentBranch().eval()


class Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(torch.special.bessel_j0(x).mean((2, 3)))


def build_unexportable() -> nn.Module:
    return Unexportable().eval()


def build_not_a_module():
    return {"weights": torch.zeros(3)}


def build_broken():
    raise RuntimeError("CUDA out of memory (pretend)")
