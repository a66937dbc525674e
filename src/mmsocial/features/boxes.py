"""Object boxes and object features (BSSAN's O2W input, offline substitute for Faster R-CNN).

Boxes are (x1, y1, x2, y2) in the pixels of the network input. Three sources:

* ``cam_boxes``: peaks of the class-activation map of the ImageNet classifier; each peak is grown
  into the connected region where the map stays above a fraction of the peak value.
* ``grid_boxes``: a regular k x k grid.
* ``OnnxDetector``: any ONNX detector file (adapter; the defaults fit the CenterNet COCO model
  described in OFFLINE.md: input (1, S, S, 3) RGB 0..255, output (1, D, 6) x1 y1 x2 y2 score class).

``roi_features`` pools each box from the region grid with RoIAlign -> (N, P, C).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torchvision.ops import box_iou, roi_align


def grid_boxes(count: int, height: int, width: int) -> torch.Tensor:
    """(count, 4) boxes of a regular k x k grid over an image, count = k*k, row-major."""
    k = math.isqrt(count)
    if k * k != count or count < 1:
        raise ValueError(f"grid boxes need a square count (1, 4, 9, 16, ...), got {count}")
    ys, xs = torch.linspace(0, height, k + 1), torch.linspace(0, width, k + 1)
    return torch.tensor([[xs[j], ys[i], xs[j + 1], ys[i + 1]] for i in range(k) for j in range(k)])


def cam_boxes(cams: torch.Tensor, count: int, height: int, width: int,
              thresholds: tuple[float, ...] = (0.5, 0.25, 0.75), upsample: int = 4,
              max_overlap: float = 0.8) -> torch.Tensor:
    """(N, h, w) class-activation maps -> (N, count, 4) boxes in input pixels, strongest first.

    Peaks are the local maxima of each map (3x3 neighbourhood), strongest first. For every
    threshold t in turn, each peak gives the bounding box of the connected region where the
    bilinearly upsampled map is >= t * peak. A box overlapping an earlier one by IoU > max_overlap
    is dropped; if fewer than ``count`` boxes remain, the whole image and then grid cells fill up.
    """
    if cams.dim() != 3:
        raise ValueError(f"cams must be (N, h, w), got {tuple(cams.shape)}")
    n, h, w = cams.shape
    cams = cams.detach().float().cpu()
    peaks_mask = (F.max_pool2d(cams[:, None], 3, stride=1, padding=1)[:, 0] == cams) & (cams > 0)
    up = F.interpolate(cams[:, None], size=(h * upsample, w * upsample), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    sx, sy = width / (w * upsample), height / (h * upsample)
    fill = torch.cat([torch.tensor([[0.0, 0.0, width, height]])] +
                     [grid_boxes(k * k, height, width) for k in (2, 3, 4, 5, 6, 7, 8)])
    out = torch.zeros(n, count, 4)
    for i in range(n):
        ys, xs = torch.nonzero(peaks_mask[i], as_tuple=True)
        order = torch.argsort(cams[i, ys, xs], descending=True)
        peaks = [(int(ys[o]), int(xs[o])) for o in order]
        chosen: list[torch.Tensor] = []
        for t in thresholds:
            for py, px in peaks:
                if len(chosen) == count:
                    break
                uy, ux = min(py * upsample + upsample // 2, h * upsample - 1), min(px * upsample + upsample // 2, w * upsample - 1)
                level = up[i, uy, ux] * t
                labels, _ = ndimage.label(up[i] >= level)
                region = labels == labels[uy, ux]
                if not region.any() or labels[uy, ux] == 0:
                    continue
                rows, cols = np.nonzero(region)
                box = torch.tensor([cols.min() * sx, rows.min() * sy, (cols.max() + 1) * sx, (rows.max() + 1) * sy])
                if chosen and box_iou(box[None], torch.stack(chosen)).max() > max_overlap:
                    continue
                chosen.append(box)
        for box in fill:
            if len(chosen) >= count:
                break
            if not chosen or box_iou(box[None], torch.stack(chosen)).max() <= max_overlap:
                chosen.append(box)
        while len(chosen) < count:  # only when count exceeds every fill box
            chosen.append(fill[0])
        out[i] = torch.stack(chosen[:count])
    return out


def roi_features(fmap: torch.Tensor, boxes: torch.Tensor, input_size: tuple[int, int],
                 output_size: int = 2) -> torch.Tensor:
    """RoIAlign every box on the feature map and average the bins: (N, C, h, w), (N, P, 4) -> (N, P, C)."""
    n, p = boxes.shape[:2]
    scale = fmap.shape[-1] / input_size[1]
    if abs(fmap.shape[-2] / input_size[0] - scale) > 1e-6:
        scale_h = fmap.shape[-2] / input_size[0]
        if abs(scale_h - scale) > 0.1 * scale:
            raise ValueError("roi_features needs the same stride in both directions")
    pooled = roi_align(fmap, list(boxes.to(fmap.dtype).to(fmap.device).unbind(0)), output_size=output_size,
                       spatial_scale=scale, sampling_ratio=2, aligned=True)
    return pooled.mean((2, 3)).view(n, p, -1)


class OnnxDetector:
    """Boxes from an ONNX object detector file given by path (onnxruntime, CPU or CUDA).

    input_size: side the image is resized to; channels_last: (1, S, S, 3) rather than (1, 3, S, S);
    scale: pixel values are divided by this (1.0 keeps 0..255); the output is read as rows of
    (x1, y1, x2, y2, score, class) in input pixels (``normalised=True``: in [0, 1]).
    """

    def __init__(self, path: "str | Path", input_size: int = 512, channels_last: bool = True,
                 scale: float = 1.0, normalised: bool = False):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX detector file {path} does not exist")
        self.session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        self.input_name = self.session.get_inputs()[0].name
        self.path, self.input_size, self.channels_last = path, input_size, channels_last
        self.scale, self.normalised = scale, normalised

    def detect(self, image) -> np.ndarray:
        """A PIL image -> (D, 6) array x1, y1, x2, y2 (image pixels), score, class; by score."""
        from PIL import Image

        s = self.input_size
        arr = np.asarray(image.convert("RGB").resize((s, s), Image.BILINEAR), dtype=np.float32) / self.scale
        x = arr[None] if self.channels_last else arr.transpose(2, 0, 1)[None]
        (det,) = self.session.run(None, {self.input_name: np.ascontiguousarray(x)})[:1]
        det = np.asarray(det, dtype=np.float32).reshape(-1, 6).copy()
        fx, fy = image.width / (1.0 if self.normalised else s), image.height / (1.0 if self.normalised else s)
        det[:, [0, 2]] *= fx
        det[:, [1, 3]] *= fy
        return det[np.argsort(-det[:, 4], kind="stable")]

    def boxes(self, images, count: int, height: int, width: int) -> torch.Tensor:
        """(N, count, 4) top-scoring boxes in the pixels of a (height, width) network input.

        Fewer detections than ``count`` are filled with the whole image, then grid cells.
        """
        out = torch.zeros(len(images), count, 4)
        fill = torch.cat([torch.tensor([[0.0, 0.0, width, height]])] +
                         [grid_boxes(k * k, height, width) for k in (2, 3, 4, 5, 6, 7, 8)])
        for i, im in enumerate(images):
            det = self.detect(im)[:count, :4]
            det[:, [0, 2]] = np.clip(det[:, [0, 2]] * width / im.width, 0, width)
            det[:, [1, 3]] = np.clip(det[:, [1, 3]] * height / im.height, 0, height)
            boxes = torch.from_numpy(det)
            if len(boxes) < count:
                boxes = torch.cat([boxes, fill[: count - len(boxes)]])
            out[i] = boxes
        return out
