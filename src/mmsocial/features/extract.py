"""Extract image features of a corpus into the feature store (``mmsocial features extract``).

kinds (DESIGN.md feature table):
  regions  (N, R, C)  region grid, R = h*w row-major
  pooled   (N, C)     pooled vector
  objects  (N, P, C)  RoIAlign features of P boxes; extra ``boxes`` (N, P, 4) float32 holding
                      x1, y1, x2, y2 as fractions of the image width and height

Only posts with an image are extracted. Images are resized to size x size (no crop) and
decoded by DataLoader worker processes while the network runs. An image that fails to decode
raises a CorpusError naming the post; with ``on_error="zeros"`` its row is zeros instead and
the extra array ``valid`` (N,) uint8 marks it 0 (a warning gives the count).
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmsocial.data.corpus import SYNTHETIC_IMAGE_SCHEME, Corpus, CorpusError
from mmsocial.features.backbones import FeatureExtractor, image_to_tensor, load_backbone, parameters_fingerprint
from mmsocial.features.boxes import OnnxDetector, cam_boxes, grid_boxes, roi_features
from mmsocial.features.store import FeatureSet, check_output, is_complete, write_features

KINDS = ("regions", "pooled", "objects")
BOX_SOURCES = ("cam", "grid")  # or a path to an ONNX detector file


class PostImages(Dataset):
    """(row, image tensor (3, size, size) in [0, 1], error message or "") for the given rows."""

    def __init__(self, corpus: Corpus, post_ids: list[str], rows: np.ndarray, size: int):
        self.corpus, self.post_ids, self.rows, self.size = corpus, post_ids, np.asarray(rows), size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        try:
            image = self.corpus.open_image(self.post_ids[row])
        except CorpusError as e:
            return row, torch.zeros(3, self.size, self.size), str(e)
        return row, image_to_tensor(image, self.size), ""


def default_output(corpus: Corpus, kind: str, backbone: str, size: int) -> Path:
    if corpus.root is None:
        raise ValueError("the corpus has no folder (it was never saved): pass out=PATH")
    return Path(corpus.root) / "features" / f"{kind}-{backbone}-{size}"


def corpus_fingerprint(corpus: Corpus) -> str:
    h = hashlib.sha256()
    for pid, img in zip(corpus.posts["post_id"], corpus.posts["image"]):
        h.update(f"{pid}\t{img}\n".encode())
    return h.hexdigest()[:16]


def image_keys(corpus: Corpus, post_ids: list[str]) -> list[str]:
    """What each post's features are computed from: the image path with the file's size and
    modification time (a rendered synthetic image: a checksum of its objects). An edited,
    replaced or touched image gets a new key, so its row is extracted again."""
    rows = corpus.posts.set_index("post_id", drop=False).loc[post_ids]
    objects = rows["objects"] if "objects" in rows.columns else [None] * len(rows)
    keys = []
    for pid, img, obj in zip(post_ids, rows["image"], objects):
        if str(img).startswith(SYNTHETIC_IMAGE_SCHEME):
            keys.append(f"{img}\tobjects:{zlib.crc32(str(obj).encode()):08x}")
            continue
        path = corpus.image_path(pid)
        try:
            st = os.stat(path)
            keys.append(f"{img}\t{st.st_size}\t{st.st_mtime_ns}")
        except OSError:
            keys.append(f"{img}\tmissing")
    return keys


def extract_features(corpus: Corpus, kind: str, backbone: "str | FeatureExtractor" = "mobilenet_v2",
                     size: int = 224, out: "str | Path | None" = None, batch_size: int = 32,
                     workers: int = 2, weights: str = "imagenet", boxes: str = "cam", objects: int = 10,
                     on_error: str = "raise", device: "str | None" = None,
                     progress: bool = True, overwrite: bool = False, seed: "int | None" = 0) -> FeatureSet:
    """Extract ``kind`` features of every post with an image; resumes an interrupted run.

    backbone: a name (see backbones.SPECS) loaded with ``weights`` ("imagenet", "random" or a
    path), or an already loaded FeatureExtractor. boxes (kind "objects"): "cam", "grid" or the
    path of an ONNX detector file; objects: boxes per image (P). seed: the seed of random
    weights loaded by name (None: the caller's torch RNG), so that the same call gives the same
    weights and finds its own feature set again. device: None picks CUDA when available. A complete feature set at ``out`` made with the same settings is returned as it
    is unless ``overwrite``; rows whose image changed since (size or modification time) are
    extracted again. ``out`` may be new, an empty folder or a feature set; a feature set made
    with other settings is replaced only with ``overwrite``; anything else there is an error.
    The returned FeatureSet has ``stats`` (images, seconds, images_per_s, resumed_from, cached).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if batch_size < 1 or workers < 0 or objects < 1:
        raise ValueError("batch_size and objects must be >= 1 and workers >= 0")
    if on_error not in ("raise", "zeros"):
        raise ValueError(f"on_error must be 'raise' or 'zeros', got {on_error!r}")
    detector = None
    if kind == "objects" and boxes not in BOX_SOURCES:
        if not Path(boxes).is_file():
            raise ValueError(f"boxes must be 'cam', 'grid' or the path of an ONNX detector file; "
                             f"{boxes!r} is neither")
        detector = OnnxDetector(boxes)
    if kind == "objects" and boxes == "grid":
        grid_boxes(objects, size, size)  # validates the count up front
    has_image = corpus.posts["image"].notna().to_numpy()
    post_ids = corpus.posts["post_id"][has_image].tolist()
    if not post_ids:
        raise CorpusError(f"{corpus.root or corpus.name}: no post has an image (field 'image'); nothing to extract")
    name = backbone.name if isinstance(backbone, FeatureExtractor) else backbone
    out = Path(out) if out is not None else default_output(corpus, kind, name, size)
    check_output(out)  # a file or a folder of the user's is refused before any work
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(backbone, FeatureExtractor):
        model = backbone
    elif weights == "random" and seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_backbone(backbone, weights, device)
    else:
        model = load_backbone(backbone, weights, device)
    model = model.to(device).eval()

    side = model.grid_size(size)
    channels = model.spec.pooled_channels if kind == "pooled" else model.spec.grid_channels
    dims = {"regions": (side * side, channels), "pooled": (channels,), "objects": (objects, channels)}[kind]
    extra_dims: dict = {}
    if kind == "objects":
        extra_dims["boxes"] = (objects, 4)
    if on_error == "zeros":
        extra_dims["valid"] = ((), "uint8")
    manifest = {
        "extractor": kind, "backbone": model.name, "weights": model.weights_id, "input_size": size,
        "grid": [side, side] if kind != "pooled" else None, "preprocess": "resize to size x size "
        "(bilinear, no crop), ImageNet mean/std", "on_error": on_error,
        "boxes": (str(boxes) if detector is None else f"onnx:{Path(boxes).name}") if kind == "objects" else None,
        "corpus": {"name": corpus.name, "version": corpus.meta.get("version"),
                   "fingerprint": corpus_fingerprint(corpus)},
    }
    if corpus.root is not None:
        manifest["corpus"]["root"] = str(corpus.root)
        if isinstance(backbone, str):
            manifest["command"] = (f"mmsocial features extract {corpus.root} --kind {kind} --backbone {backbone} "
                                   f"--size {size} --weights {weights} --out {out}"
                                   + (f" --boxes {boxes} --objects {objects}" if kind == "objects" else "")
                                   + (" --on-error zeros" if on_error == "zeros" else "")
                                   + (f" --seed {seed}" if weights == "random" and seed is not None else ""))
    keys = image_keys(corpus, post_ids)
    if model.weights_id == "random":  # resume and reuse only with these very random weights
        manifest["random_parameters"] = parameters_fingerprint(model)
    cached = {"images": 0, "seconds": 0.0, "images_per_s": float("nan"), "cached": True}
    if not overwrite and is_complete(out, post_ids, dims, manifest, extra_dims, keys):
        fs = FeatureSet.open(out)  # checked without the lock: nothing is written
        fs.stats = {**cached, "resumed_from": len(fs)}
        return fs
    stats = {"images": 0, "seconds": 0.0}
    failures: list[str] = []

    def batches(rows: np.ndarray):
        loader = DataLoader(PostImages(corpus, post_ids, rows, size), batch_size=batch_size,
                            num_workers=workers, pin_memory=device.type == "cuda",
                            prefetch_factor=4 if workers else None, persistent_workers=False)
        bar = tqdm(total=len(post_ids), initial=len(post_ids) - len(rows), unit="img",
                   desc=f"{kind} {model.name}@{size}", disable=not progress)
        start = time.perf_counter()
        try:
            for row_ids, images, errors in loader:
                bad = [e for e in errors if e]
                if bad and on_error == "raise":
                    raise CorpusError(bad[0])
                failures.extend(bad)
                with torch.no_grad():
                    data, more = _compute(model, images.to(device, non_blocking=True), kind, size,
                                          objects, boxes, detector)
                if on_error == "zeros":
                    ok = np.array([not e for e in errors])
                    data[~ok] = 0
                    more["valid"] = ok.astype(np.uint8)
                    if "boxes" in more:
                        more["boxes"][~ok] = 0
                at = 0
                for s, e in _runs(row_ids.numpy()):
                    yield s, data[at:at + e - s], {k: v[at:at + e - s] for k, v in more.items()}
                    at += e - s
                stats["images"] += len(row_ids)
                bar.update(len(row_ids))
        finally:
            stats["seconds"] = time.perf_counter() - start
            bar.close()

    fs = write_features(out, post_ids, dims, batches, manifest, extra_dims, row_keys=keys, overwrite=overwrite)
    if fs.stats.get("cached"):  # another process wrote it while this one waited for the lock
        fs.stats = {**cached, "resumed_from": len(fs)}
        return fs
    if failures:
        warnings.warn(f"{len(failures)} images could not be decoded and were written as zeros "
                      f"(valid = 0); first: {failures[0]}")
    stats["images_per_s"] = stats["images"] / stats["seconds"] if stats["seconds"] > 0 else float("nan")
    stats["resumed_from"] = fs.stats["resumed_from"]
    stats["cached"] = False
    fs.stats = stats
    return fs


def _runs(rows: np.ndarray):
    """Contiguous [start, stop) runs of consecutive row numbers, in order (rows are ascending)."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for part in np.split(rows, breaks):
        yield int(part[0]), int(part[-1]) + 1


def _compute(model: FeatureExtractor, images: torch.Tensor, kind: str, size: int, objects: int,
             boxes: str, detector: OnnxDetector | None) -> tuple[np.ndarray, dict]:
    fmap = model.feature_map(images)
    if kind == "regions":
        return fmap.flatten(2).transpose(1, 2).float().cpu().numpy(), {}
    if kind == "pooled":
        return model.head(fmap).float().cpu().numpy(), {}
    n = len(images)
    if detector is not None:
        from torchvision.transforms.functional import to_pil_image

        b = detector.boxes([to_pil_image(im.cpu()) for im in images], objects, size, size)
    elif boxes == "grid":
        b = grid_boxes(objects, size, size).expand(n, objects, 4)
    else:
        cams, _ = model.class_activation_maps(fmap.float())
        b = cam_boxes(cams, objects, size, size)
    feats = roi_features(fmap, b.to(fmap.device), (size, size))
    return feats.float().cpu().numpy(), {"boxes": (b / size).numpy().astype(np.float32)}
