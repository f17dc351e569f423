"""Stage make_dataset: validated, cleaned, split products in data/processed (parquet)."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, dataset
from rakuten_classifier.files import write_json


def main(
    params_file: Path = config.PARAMS_FILE,
    raw_dir: Path = config.RAW_DIR,
    out_dir: Path = config.PROCESSED_DIR,
    summary_file: Path = config.METRICS_DIR / "data.json",
    feedback_dir: Path = config.FEEDBACK_DIR,
) -> None:
    config.setup_logging()
    params = config.load_params(path=params_file)
    summary = dataset.make_dataset(
        raw_dir, out_dir, params["make_dataset"], params["seed"], feedback_dir
    )
    write_json(summary_file, summary)


if __name__ == "__main__":
    typer.run(main)
