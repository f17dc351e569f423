"""The model bundle: everything needed to classify a product, saved together, loaded by one
function, and the one prediction path that the pipeline, the batch command and the API share.

models/bundle/
  manifest.json    format, model version, params, metrics, sha256 of every file
  labels.json      class order, product type codes and names
  text/            text model (scikit-learn pipeline or Keras network) and its settings
  image/           Keras image model and its input size
  fusion/          how the two combine
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from rakuten_classifier import config
from rakuten_classifier.calibration import softmax
from rakuten_classifier.config import logger
from rakuten_classifier.data import image_paths, read_products, write_predictions_csv
from rakuten_classifier.drift_profile import PROFILE_JSON, Profile
from rakuten_classifier.files import read_json, sha256_file, write_json
from rakuten_classifier.fusion import FUSION_JSON, Fusion
from rakuten_classifier.image import IMAGE_MODEL_JSON, ImageModel, load_image_model
from rakuten_classifier.labels import LabelMap
from rakuten_classifier.preprocess import ImageError, product_text, read_photo
from rakuten_classifier.sentence_encoder import encoder_names
from rakuten_classifier.text import TEXT_MODEL_JSON, TextModel, load_text_model

# 2: no build time in the manifest (the same run gives the same bundle, byte for byte).
FORMAT_VERSION = 2
MANIFEST_JSON = "manifest.json"
# Each component's folder and the settings file that describes it.
COMPONENTS = {
    "text": TEXT_MODEL_JSON,
    "image": IMAGE_MODEL_JSON,
    "fusion": FUSION_JSON,
    "profile": PROFILE_JSON,  # the reference for drift detection (drift_profile)
}


class BundleError(RuntimeError):
    """A bundle that is missing, incomplete, of another format or altered since it was built."""


@dataclass
class BundlePrediction:
    """Per product: fused probabilities, each modality's own, and what the photo contributed."""

    probabilities: np.ndarray
    text_probabilities: np.ndarray
    image_probabilities: np.ndarray  # NaN rows where no photo was used
    image_used: np.ndarray
    image_problems: list[str | None]
    labels: LabelMap
    # The photos' pooled backbone features and mean colour (R, G, B of the decoded photo),
    # one row per used photo (image_used's True rows): what drift detection compares.
    image_features: np.ndarray | None = None
    image_colours: np.ndarray | None = None

    @property
    def codes(self) -> np.ndarray:
        return np.asarray(self.labels.codes)[self.probabilities.argmax(axis=1)]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    def features_of(self, row: int) -> np.ndarray | None:
        """The backbone features of product `row`'s photo, or None if no photo was used."""
        if self.image_features is None or not self.image_used[row]:
            return None
        return self.image_features[int(np.count_nonzero(self.image_used[:row]))]

    def colour_of(self, row: int) -> np.ndarray | None:
        """The mean R, G, B of product `row`'s decoded photo, or None if no photo was used."""
        if self.image_colours is None or not self.image_used[row]:
            return None
        return self.image_colours[int(np.count_nonzero(self.image_used[:row]))]

    def top(self, row: int, k: int = 5) -> list[tuple[int, float]]:
        order = np.argsort(-self.probabilities[row])[:k]
        return [(self.labels.codes[i], float(self.probabilities[row, i])) for i in order]


@dataclass
class Bundle:
    path: Path
    labels: LabelMap
    text: TextModel
    image: ImageModel | None
    fusion: Fusion
    manifest: dict[str, Any]
    profile: Profile | None = None  # drift detection's reference, when the bundle has one

    @property
    def version(self) -> str:
        return self.manifest["model_version"]

    @property
    def sentence_encoders(self) -> list[str]:
        """The sentence encoders its text model reads (each product pays for them)."""
        return encoder_names(self.manifest.get("params", {}).get("tokenize", {}))

    def decode_images(
        self, images: Sequence[bytes | None]
    ) -> tuple[np.ndarray | None, np.ndarray, list[str | None]]:
        """Decode the photos that are there; report why each unusable one was left out."""
        problems: list[str | None] = []
        decoded: list[np.ndarray] = []
        for data in images:
            if self.image is None:
                problems.append("the bundle has no image model")
            elif data is None:
                problems.append("missing")
            else:
                try:
                    decoded.append(self.image.decode(data))
                    problems.append(None)
                except ImageError as error:
                    problems.append(str(error))
        used = np.array([problem is None for problem in problems], dtype=bool)
        return (np.stack(decoded) if decoded else None), used, problems

    def prepare(
        self,
        designations: Sequence[str],
        descriptions: Sequence[str | None],
        images: Sequence[bytes | None],
    ) -> PreparedProducts:
        """The models' inputs: the cleaned texts and the decoded photos (no model runs yet)."""
        texts = [product_text(t, d) for t, d in zip(designations, descriptions, strict=True)]
        return PreparedProducts(texts, *self.decode_images(images))

    def predict_prepared(self, prepared: PreparedProducts) -> BundlePrediction:
        text_probabilities = self.text.predict_proba(prepared.texts)
        pixels, used = prepared.pixels, prepared.used
        image_probabilities = np.full_like(text_probabilities, np.nan)
        features = colours = None
        if pixels is not None:
            colours = mean_colours(pixels)
            features = self.image.features(pixels)
            logits = self.image.logits_of_features(features)
            image_probabilities[used] = softmax(logits, self.image.temperature)
        fused = self.fusion.combine(text_probabilities, image_probabilities, used)
        return BundlePrediction(
            fused,
            text_probabilities,
            image_probabilities,
            used,
            prepared.problems,
            self.labels,
            features,
            colours,
        )

    def predict_products(
        self,
        designations: Sequence[str],
        descriptions: Sequence[str | None],
        images: Sequence[bytes | None],
    ) -> BundlePrediction:
        """Classify products from their raw title, description and photo bytes (or None)."""
        return self.predict_prepared(self.prepare(designations, descriptions, images))


@dataclass
class PreparedProducts:
    """A batch ready for the models: `Bundle.prepare`'s output, `predict_prepared`'s input."""

    texts: list[str]
    pixels: np.ndarray | None  # the usable photos, decoded, in product order
    used: np.ndarray
    problems: list[str | None]

    @classmethod
    def concatenate(cls, parts: Sequence[PreparedProducts]) -> PreparedProducts:
        """Several batches as one (the API's requests that share a model call)."""
        pixels = [part.pixels for part in parts if part.pixels is not None]
        return cls(
            [text for part in parts for text in part.texts],
            np.concatenate(pixels) if pixels else None,
            np.concatenate([part.used for part in parts]),
            [problem for part in parts for problem in part.problems],
        )


def mean_colours(pixels: np.ndarray) -> np.ndarray:
    """Each decoded photo's mean R, G and B (0-255)."""
    return pixels.reshape(len(pixels), -1, pixels.shape[-1]).mean(axis=1, dtype=np.float64)


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): sha256_file(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST_JSON
    }


def assemble_bundle(
    out_dir: Path,
    component_dirs: dict[str, Path],
    labels: LabelMap,
    params: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    per_class_f1: dict[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Copy the trained components into `out_dir` and write its manifest. Nothing in it depends
    on when or where it was built: the same components give the same bytes. `per_class_f1`
    (model -> product type code -> held-out F1) is what the promotion gate compares."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in COMPONENTS:
        if name in component_dirs:
            shutil.copytree(component_dirs[name], out_dir / name, dirs_exist_ok=True)
    write_json(out_dir / config.LABELS_JSON, labels.to_json())
    files = _file_hashes(out_dir)
    version = hashlib.sha256("".join(f"{k}{v}" for k, v in files.items()).encode()).hexdigest()
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_version": version[:12],
        "classes": len(labels.codes),
        "params": params,
        "components": {
            name: read_json(out_dir / name / spec)
            for name, spec in COMPONENTS.items()
            if (out_dir / name).exists()
        },
        "metrics": metrics or {},
        "per_class_f1": per_class_f1 or {},
        "training": training or {},
        "files": files,
    }
    write_json(out_dir / MANIFEST_JSON, manifest)
    return manifest


def read_manifest(path: Path = config.BUNDLE_DIR, verify: bool = True) -> dict[str, Any]:
    """A bundle's manifest, after checking its format and, by default, every file's sha256
    (without loading any model: cheap, no TensorFlow)."""
    path = Path(path)
    if not (path / MANIFEST_JSON).exists():
        raise BundleError(
            f"{path}: no model bundle here ({MANIFEST_JSON} missing); build one with `make run` "
            "or `dvc repro`, or fetch one with `dvc pull`"
        )
    manifest = read_json(path / MANIFEST_JSON)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format {manifest.get('format_version')} is not "
            f"{FORMAT_VERSION}; rebuild it with this version of the code"
        )
    if verify:
        for name, digest in manifest["files"].items():
            file = path / name
            if not file.exists():
                raise BundleError(f"{file}: listed in the manifest but missing")
            if sha256_file(file) != digest:
                raise BundleError(f"{file}: altered since the bundle was built (sha256 differs)")
    return manifest


def image_runtime_of(manifest: dict[str, Any]) -> str:
    """The image runtime a bundle was evaluated with (its `predict.image_runtime`)."""
    return manifest.get("params", {}).get("predict", {}).get("image_runtime", "litert")


def load_bundle(
    path: Path = config.BUNDLE_DIR, verify: bool = True, image_runtime: str | None = None
) -> Bundle:
    """The one way to load a bundle: checks its format and, by default, every file's sha256.
    The photo model runs on the runtime its metrics were measured with, unless `image_runtime`
    (litert or keras) says otherwise."""
    path = Path(path)
    manifest = read_manifest(path, verify)
    runtime = image_runtime or image_runtime_of(manifest)
    image = load_image_model(path / "image", runtime) if (path / "image").exists() else None
    bundle = Bundle(
        path=path,
        labels=LabelMap.from_json(read_json(path / config.LABELS_JSON)),
        text=load_text_model(path / "text"),
        image=image,
        fusion=Fusion.load(path / "fusion"),
        manifest=manifest,
        profile=Profile.load(path / "profile") if (path / "profile").exists() else None,
    )
    logger.info("loaded model bundle %s from %s", bundle.version, path)
    return bundle


def predict_frame(
    bundle: Bundle, products: pd.DataFrame, batch_size: int = 64, progress: bool = True
) -> tuple[pd.DataFrame, BundlePrediction]:
    """Predict products that carry `designation`, `description` and `image_path` columns
    (a photo path that does not exist means no photo), in batches with a progress bar.
    The next batch's photos are read and decoded in a thread while the models run on this
    one (Pillow and the LiteRT kernels release the GIL)."""

    def prepare(first: int) -> PreparedProducts:
        chunk = products.iloc[first : first + batch_size]
        images = [
            read_photo(path, missing_ok=True) if path else None for path in chunk["image_path"]
        ]
        return bundle.prepare(chunk["designation"].tolist(), chunk["description"].tolist(), images)

    parts: list[BundlePrediction] = []
    starts = range(0, len(products), batch_size)
    with (
        ThreadPoolExecutor(1, thread_name_prefix="decode") as decoder,
        tqdm(total=len(products), desc="predicting", unit="product", disable=not progress) as bar,
    ):
        upcoming = decoder.submit(prepare, starts[0]) if starts else None
        for position in range(len(starts)):
            prepared = upcoming.result()
            if position + 1 < len(starts):
                upcoming = decoder.submit(prepare, starts[position + 1])
            parts.append(bundle.predict_prepared(prepared))
            bar.update(len(prepared.texts))
    prediction = _concatenate(parts, bundle.labels)
    frame = pd.DataFrame(
        {"prdtypecode": prediction.codes, "probability": prediction.confidence.round(6)},
        index=products.index,
    )
    return frame, prediction


def _concatenate(parts: list[BundlePrediction], labels: LabelMap) -> BundlePrediction:
    width = len(labels.codes)
    if not parts:
        empty = np.zeros((0, width))
        return BundlePrediction(empty, empty, empty, np.zeros(0, bool), [], labels)
    features = [p.image_features for p in parts if p.image_features is not None]
    colours = [p.image_colours for p in parts if p.image_colours is not None]
    return BundlePrediction(
        np.concatenate([p.probabilities for p in parts]),
        np.concatenate([p.text_probabilities for p in parts]),
        np.concatenate([p.image_probabilities for p in parts]),
        np.concatenate([p.image_used for p in parts]),
        [problem for p in parts for problem in p.image_problems],
        labels,
        np.concatenate(features) if features else None,
        np.concatenate(colours) if colours else None,
    )


def predict_csv(
    bundle: Bundle, x_csv: Path, image_dir: str | Path, out: Path, batch_size: int = 64
) -> pd.DataFrame:
    """The batch command: a products CSV in the challenge layout in, `index,prdtypecode,
    probability` out (written atomically). Rows without a usable photo use their text."""
    products = read_products(x_csv)
    products["image_path"] = image_paths(products, image_dir)
    frame, prediction = predict_frame(bundle, products, batch_size)
    write_predictions_csv(out, frame)
    problems = pd.Series([p for p in prediction.image_problems if p]).value_counts()
    logger.info(
        "%d products predicted into %s: %d with their photo, %d from text alone",
        len(frame),
        out,
        int(prediction.image_used.sum()),
        int((~prediction.image_used).sum()),
    )
    for problem, count in problems.items():
        logger.info("  %d photo(s): %s", count, problem)
    return frame
