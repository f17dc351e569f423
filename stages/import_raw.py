"""Stage import_raw: the challenge files (sample or full data set) into data/raw."""

from pathlib import Path

import _environment  # noqa: F401  (first: checks the environment, pins the numerics)
import typer

from rakuten_classifier import config, raw_import
from rakuten_classifier.data import DataError
from rakuten_classifier.download import DownloadError


def main(params_file: Path = config.PARAMS_FILE, out_dir: Path = config.RAW_DIR) -> None:
    config.setup_logging()
    try:
        raw_import.import_raw(config.load_params("data", params_file), out_dir)
    except (DownloadError, raw_import.ArchiveError, DataError) as error:
        # The message says what failed and what to do; a traceback would bury it.
        config.logger.error("%s", error)
        raise typer.Exit(1) from error


if __name__ == "__main__":
    typer.run(main)
