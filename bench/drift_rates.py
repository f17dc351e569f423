"""How often drift detection fires: on windows of traffic from the same distribution as the
model's (false alarms) and on shifted windows (detections), per window size.

Traffic is the held-out test split of the pipeline (data/processed/test.parquet: real
products no model below trained on), predicted by the models trained on the train split
(models/text, image, fusion: the bundle before its refit) and described as the prediction
store describes them (`reference.observation`); it is compared with the shipped bundle's
reference profile (models/bundle: its model side comes from the validation and out-of-fold
predictions, which the test split is not part of) by `drift.check_window`, with params.yaml's
`drift:` settings. Windows are drawn with replacement from those products:

- same distribution: as they are;
- category mix: drawn with the full data set's product type shares (class_counts_full_train.csv)
  of their true type instead of the sample's even ones;
- another language: only the products whose text is not French (guessed from stop words);
- photos missing: sent without their photo;
- corrupted photos: their photos with heavy noise and JPEG artefacts (they still decode);
- recoloured photos: a warm colour cast on their photos (blue -40%, green -15%);
- unseen product types (a proxy): the profile's model side rebuilt without the held-out
  products of 4 product types, and windows of those types' products, so that for the reference
  they are new (the model itself still knows them: a model that never saw them would also be
  unsure, so real unseen types are easier to detect than this).

    .venv/bin/python bench/drift_rates.py [--windows 100] [--sizes 30,60,100]
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import typer
from PIL import Image
from tqdm import tqdm

from rakuten_classifier import config
from rakuten_classifier.bundle import Bundle, assemble_bundle, load_bundle
from rakuten_classifier.data import load_labels, load_split
from rakuten_classifier.drift import DriftSettings, check_window
from rakuten_classifier.drift_profile import Profile
from rakuten_classifier.preprocess import inspect_image, read_photo
from rakuten_classifier.reference import observation

UNSEEN_TYPES = 4


def observe(bundle: Bundle, products: pd.DataFrame, photos: list[bytes | None]) -> pd.DataFrame:
    """What the store would keep of these products, predicted by the bundle."""
    rows = []
    for start in tqdm(range(0, len(products), 32), desc="predicting", leave=False):
        chunk = products.iloc[start : start + 32]
        images = photos[start : start + 32]
        prediction = bundle.predict_products(
            chunk["designation"].tolist(), chunk["description"].tolist(), images
        )
        for row, (product, image) in enumerate(zip(chunk.itertuples(), images, strict=True)):
            size = inspect_image(image)[1] if image is not None else None
            rows.append(
                observation(product.designation, product.description, size, prediction, row,
                            bundle.profile)
            )  # fmt: skip
    return pd.DataFrame(rows, index=products.index)


def noisy(data: bytes) -> bytes:
    """Heavy Gaussian noise, then JPEG at quality 5."""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    noise = np.random.default_rng(len(data)).normal(0, 60, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=5)
    return out.getvalue()


def recoloured(data: bytes) -> bytes:
    """A warm colour cast (a camera's white balance gone wrong): blue down by 40%, green by
    15%. (Swapping channels moves nothing a catalogue-wide test sees: over many products red
    and blue are interchangeable.)"""
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    pixels *= np.array([1.0, 0.85, 0.6], dtype=np.float32)
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def without_types(profile: Profile, codes: list[int]) -> Profile:
    """The profile as if the products of `codes` had never been seen: its model side (the
    held-out predictions of data/held_out) rebuilt without those products."""
    labels = load_labels(config.PROCESSED_DIR)
    with np.load(config.HELD_OUT_DIR / config.HELD_OUT_FILE) as held_out:
        keep = ~np.isin(np.asarray(labels.codes)[held_out["label"]], codes)
        arrays = dict(profile.arrays)
        arrays["confidence"] = held_out["confidence"][keep]
        arrays["text_embedding"] = held_out["text_log_probabilities"][keep]
        predicted = np.asarray(labels.codes)[held_out["predicted"][keep]]
    prior = [float(np.mean(predicted == code)) for code in profile.codes]
    return Profile(profile.codes, profile.class_prior, prior, profile.language_shares,
                   profile.photo_share, arrays)  # fmt: skip


def rate(
    profile: Profile,
    draw: Callable[[np.random.Generator, int], pd.DataFrame],
    size: int,
    windows: int,
    settings: DriftSettings,
) -> tuple[float, dict[str, float]]:
    """The share of windows on which any check fired, and each check's own share."""
    rng = np.random.default_rng(size)
    fired, per_check = 0, {}
    for _ in range(windows):
        checks = check_window(profile, draw(rng, size), settings)
        fired += any(check.drifted for check in checks)
        for check in checks:
            per_check[check.name] = per_check.get(check.name, 0) + check.drifted
    return fired / windows, {name: count / windows for name, count in per_check.items()}


def evaluated_bundle(scratch: Path) -> Bundle:
    """The models trained on the train split alone, assembled as a bundle with the shipped
    bundle's profile."""
    labels = load_labels(config.PROCESSED_DIR)
    components = {name: config.MODELS_DIR / name for name in ("text", "image", "fusion")}
    assemble_bundle(scratch, components, labels, {})
    bundle = load_bundle(scratch)
    bundle.profile = Profile.load(config.BUNDLE_DIR / "profile")
    return bundle


def main(
    windows: int = typer.Option(100, help="Windows per scenario and size."),
    sizes: str = typer.Option("30,60,100", help="Window sizes (products)."),
    params_file: Path = typer.Option(config.PARAMS_FILE),
) -> None:
    settings = DriftSettings.from_params(config.load_params("drift", params_file))
    with tempfile.TemporaryDirectory() as scratch:
        bundle = evaluated_bundle(Path(scratch) / "bundle")
        products = load_split("test")
        photos = [
            read_photo(path, missing_ok=True) if has else None
            for path, has in zip(products["image_path"], products["has_image"], strict=True)
        ]
        base = observe(bundle, products, photos)
        variants = {
            "photos missing": observe(bundle, products, [None] * len(products)),
            "corrupted photos": observe(bundle, products, [p and noisy(p) for p in photos]),
            "recoloured photos": observe(bundle, products, [p and recoloured(p) for p in photos]),
        }
    full = pd.read_csv(config.SAMPLE_DIR / config.CLASS_COUNTS_CSV).set_index("prdtypecode")
    weights = products["prdtypecode"].map(full.iloc[:, 0]).fillna(0).to_numpy(float)
    foreign = base[base["language"] != "fr"]
    unseen = sorted(products["prdtypecode"].unique())[:: len(bundle.labels.codes) // UNSEEN_TYPES][
        :UNSEEN_TYPES
    ]
    unseen_profile = without_types(bundle.profile, unseen)
    unseen_rows = base[products["prdtypecode"].isin(unseen).to_numpy()]

    def sampler(frame: pd.DataFrame, p: np.ndarray | None = None, repeats: bool = False):
        """Windows without repeated products when the pool is large enough (a repeated product
        looks like drift to a two-sample test), with repeats otherwise (small shifted pools)."""
        probabilities = None if p is None else p / p.sum()

        def draw(rng: np.random.Generator, n: int) -> pd.DataFrame:
            distinct = probabilities is None and n <= len(frame) and not repeats
            rows = rng.choice(len(frame), n, replace=not distinct, p=probabilities)
            return frame.iloc[rows]

        return draw

    scenarios = {
        f"same distribution ({len(base)} test products: false alarms)": (
            bundle.profile,
            sampler(base),
        ),
        "same distribution, drawn with repeats (the control of the small pools below)": (
            bundle.profile,
            sampler(base, repeats=True),
        ),
        "category mix of the full data": (bundle.profile, sampler(base, weights)),
        f"another language ({len(foreign)} products)": (bundle.profile, sampler(foreign)),
        **{name: (bundle.profile, sampler(frame)) for name, frame in variants.items()},
        f"unseen product types ({len(unseen_rows)} products of {UNSEEN_TYPES} types)": (
            unseen_profile,
            sampler(unseen_rows),
        ),
    }
    print(f"settings: {settings}; {windows} windows per cell; any check firing counts\n")
    header = ["scenario"] + [f"{size} products" for size in sizes.split(",")]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    details = {}
    for name, (profile, draw) in scenarios.items():
        cells = []
        for size in (int(s) for s in sizes.split(",")):
            share, per_check = rate(profile, draw, size, windows, settings)
            cells.append(f"{share:.1%}")
            details[(name, size)] = per_check
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    largest = max(int(s) for s in sizes.split(","))
    print(f"\nper check, windows of {largest}:")
    for name in scenarios:
        fired = {k: f"{v:.0%}" for k, v in details[(name, largest)].items() if v}
        print(f"  {name}: {fired or 'none'}")


if __name__ == "__main__":
    typer.run(main)
