"""The real-model suite: torch models exported by both exporters, PP-OCR, skl2onnx.

Each entry builds (model bytes, example inputs) on demand; tests compare them
with onnxruntime and bench/engine.py times them. torch, onnxscript and
rapidocr-onnxruntime are test dependencies ([dev] extra).
"""
from __future__ import annotations

import functools
import importlib.util
import io
import pathlib
import warnings
from typing import Callable

import numpy as np

Model = tuple[bytes, dict[str, np.ndarray]]


def _torch_models():
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            return self.head(torch.flatten(self.features(x), 1))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNet18(nn.Module):
        """torchvision's resnet18, written out (torchvision does not install beside the CPU wheel)."""

        def __init__(self, classes=1000):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
                layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(512, classes)

        def forward(self, x):
            x = self.layers(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def conv_bn_act(cin, cout, k, stride=1, groups=1, act=nn.Hardswish):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=0.001, momentum=0.01)]
        return nn.Sequential(*layers, *([act()] if act else []))

    def divisible(v, d=8):
        new = max(d, int(v + d / 2) // d * d)
        return new + d if new < 0.9 * v else new

    class SqueezeExcitation(nn.Module):
        def __init__(self, c, squeeze):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)

        def forward(self, x):
            s = self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(x, 1))))
            return x * nn.functional.hardsigmoid(s)

    class InvertedResidual(nn.Module):
        def __init__(self, cin, k, exp, cout, se, act, stride):
            super().__init__()
            self.residual = stride == 1 and cin == cout
            layers = [] if exp == cin else [conv_bn_act(cin, exp, 1, act=act)]
            layers.append(conv_bn_act(exp, exp, k, stride, groups=exp, act=act))  # depthwise
            if se:
                layers.append(SqueezeExcitation(exp, divisible(exp // 4)))
            layers.append(conv_bn_act(exp, cout, 1, act=None))
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            y = self.block(x)
            return x + y if self.residual else y

    class MobileNetV3Small(nn.Module):
        """torchvision's mobilenet_v3_small (width 1.0), written out like ResNet18: the PyPI torchvision
        wheel is built against CUDA torch, and its operators fail to load beside the CPU wheel."""

        def __init__(self, classes=1000):
            super().__init__()
            re, hs = nn.ReLU, nn.Hardswish
            setting = [(16, 3, 16, 16, True, re, 2), (16, 3, 72, 24, False, re, 2), (24, 3, 88, 24, False, re, 1),
                       (24, 5, 96, 40, True, hs, 2), (40, 5, 240, 40, True, hs, 1), (40, 5, 240, 40, True, hs, 1),
                       (40, 5, 120, 48, True, hs, 1), (48, 5, 144, 48, True, hs, 1), (48, 5, 288, 96, True, hs, 2),
                       (96, 5, 576, 96, True, hs, 1), (96, 5, 576, 96, True, hs, 1)]
            self.features = nn.Sequential(conv_bn_act(3, 16, 3, 2), *(InvertedResidual(*s) for s in setting),
                                          conv_bn_act(96, 576, 1))
            self.classifier = nn.Sequential(nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(0.2),
                                            nn.Linear(1024, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            layer = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, batch_first=True,
                                               dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)

        def forward(self, x):
            return self.encoder(x)

    return torch, SmallCNN, ResNet18, MobileNetV3Small, Transformer


def _trained_bn(model):
    """Random BatchNorm statistics, so that folding them is actually tested."""
    import torch

    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model.eval()


def _export(model, x, dynamo: bool) -> bytes:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(model, (x,), dynamo=True, verbose=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
            return prog.model_proto.SerializeToString()
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, opset_version=17)
        return buf.getvalue()


def _torch_entry(kind: str, dynamo: bool = False) -> Model:
    torch, SmallCNN, ResNet18, MobileNetV3Small, Transformer = _torch_models()
    torch.manual_seed(0)
    model, shape = {"cnn": (lambda: _trained_bn(SmallCNN()), (1, 3, 32, 32)),
                    "resnet18": (lambda: _trained_bn(ResNet18()), (1, 3, 224, 224)),
                    "mobilenet_v3_small": (lambda: _trained_bn(MobileNetV3Small()), (1, 3, 224, 224)),
                    "transformer": (lambda: Transformer().eval(), (1, 16, 64))}[kind]
    m = model()
    x = torch.randn(2, *shape[1:])  # torch.export specializes a batch of 1; export at 2
    data = _export(m, x, dynamo)
    name = "x" if not dynamo else None
    feeds_name = name or _first_input(data)
    return data, {feeds_name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}


def _first_input(data: bytes) -> str:
    import onnx

    m = onnx.load_from_string(data)
    inits = {i.name for i in m.graph.initializer}
    return next(i.name for i in m.graph.input if i.name not in inits)


def text_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Lines of dark word-like bars on white, normalised as RapidOCR does: (x / 255 - 0.5) / 0.5.

    Random noise leaves the detector's map near zero everywhere, which would
    make a comparison with onnxruntime meaningless.
    """
    rng = np.random.default_rng(seed)
    img = np.full((height, width), 255.0, np.float32)
    for row in range(max(height // 2 - 7, 4) if height < 64 else 20, height - 14, 40):
        x = 8
        while x < width - 12:
            w = int(rng.integers(8, 40))
            img[row:row + 14, x:min(x + w, width - 4)] = 0
            x += w + int(rng.integers(6, 20))
    return np.repeat(((img / 255 - 0.5) / 0.5)[None, None], 3, axis=1).astype(np.float32)


def _ppocr(file: str, shape: tuple[int, ...]) -> Model:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    path = pathlib.Path(spec.origin).parent / "models" / file
    data = path.read_bytes()
    return data, {_first_input(data): text_image(shape[2], shape[3])}


def _sklearn(kind: str) -> Model:
    from skl2onnx import to_onnx
    from sklearn import ensemble, linear_model, neural_network

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    est = {"mlp": neural_network.MLPClassifier((64, 32), max_iter=200, random_state=0),
           "logreg": linear_model.LogisticRegression(max_iter=500),
           "forest": ensemble.RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0)}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return to_onnx(est, X[:1], options={"zipmap": False}, target_opset=17).SerializeToString(), {"X": X[:64]}


SUITE: dict[str, Callable[[], Model]] = {
    "mlp (examples/mlp.onnx)": lambda: (
        (pathlib.Path(__file__).parent.parent / "examples" / "mlp.onnx").read_bytes(),
        {"x": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}),
    "sklearn mlp": lambda: _sklearn("mlp"),
    "sklearn logreg": lambda: _sklearn("logreg"),
    "sklearn forest": lambda: _sklearn("forest"),
    "small cnn": lambda: _torch_entry("cnn"),
    "resnet18": lambda: _torch_entry("resnet18"),
    "mobilenet_v3_small": lambda: _torch_entry("mobilenet_v3_small"),
    "transformer (torchscript)": lambda: _torch_entry("transformer"),
    "transformer (dynamo)": lambda: _torch_entry("transformer", dynamo=True),
    "pp-ocr cls": lambda: _ppocr("ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    "pp-ocr det": lambda: _ppocr("ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320)),
    "pp-ocr rec": lambda: _ppocr("ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
}


@functools.lru_cache(maxsize=None)
def build(name: str) -> Model:
    return SUITE[name]()
