"""Imported first by every stage script: checks that the project's environment is the one
running the stage, then pins the numerics (`rakuten_classifier.reproducible`) before NumPy or
TensorFlow load.

DVC runs each stage's `python` from PATH. From a shell where the project's virtual environment
is not active, that is another Python without the project's packages: say so, and what to do,
instead of a ModuleNotFoundError.
"""

import sys

try:
    import typer  # noqa: F401

    from rakuten_classifier import reproducible
except ModuleNotFoundError as error:
    sys.exit(
        f"error: {sys.executable} cannot import '{error.name}': this stage runs with the "
        "`python` first on PATH, which is not the project's. Run `make setup`, then "
        "`source .venv/bin/activate` before `dvc repro` / `dvc exp run` / `dvc queue start` "
        "(or use `make run`)."
    )

reproducible.pin_numerics()
