"""Stage import_raw: the challenge files (sample or full data set) into data/raw."""

from pathlib import Path

import typer

from rakuten_classifier import config, data


def main(params_file: Path = config.PARAMS_FILE, out_dir: Path = config.RAW_DIR) -> None:
    config.setup_logging()
    data.import_raw(config.load_params("data", params_file), out_dir)


if __name__ == "__main__":
    typer.run(main)
