"""The image model's serving runtime: its Keras parts exported to LiteRT (TensorFlow Lite)
flatbuffers and run by the LiteRT interpreter with its XNNPACK CPU kernels.

Measured on the 2-core development machine, the bundle's EfficientNet-Lite0 ran about 2.5x as
many photos per second as the traced Keras function, with probabilities equal to 1e-6 (`make
bench`). Serving needs neither TensorFlow nor Keras: a process that loads a bundle starts in a
second or two instead of ten. The Keras model stays in the bundle as the reference
(`predict.image_runtime: keras`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

from rakuten_classifier.files import atomic_path

RUNTIMES = ("litert", "keras")
# What the pipeline computes its outputs with: TensorFlow's Eigen kernels give the same bits on
# every x86-64 CPU, XNNPACK's choose their code by the CPU's features. The predict stage checks
# that the served runtime gives the same classes (evaluate.check_runtime_parity).
REFERENCE_RUNTIME = "keras"
# Interpreter threads per call; RAKUTEN_IMAGE_THREADS=1 where processes already share the cores
# (one Dask worker per core).
THREADS_VARIABLE = "RAKUTEN_IMAGE_THREADS"


def export_litert(model: Any, path: Path) -> None:
    """A Keras model (its inference graph: dropout and augmentation off) as a .tflite file,
    written atomically. The same weights give the same bytes (`canonical_names`)."""
    with atomic_path(Path(path)) as tmp:
        model.export(str(tmp), format="litert", verbose=False)
        tmp.write_bytes(canonical_names(tmp.read_bytes()))


def canonical_names(flatbuffer: bytes) -> bytes:
    """The model with its tensors and signature entries named by position. The converter names
    them after Keras layers, whose names count the layers built before in the process
    ("activation_3_1"): a model loaded from disk and the same one just trained would differ."""
    model = schema.ModelT.InitFromPackedBuf(flatbuffer, 0)
    for subgraph in model.subgraphs:
        for position, tensor in enumerate(subgraph.tensors):
            tensor.name = f"t{position}"
    for signature in model.signatureDefs or []:
        for kind, entries in (("input", signature.inputs), ("output", signature.outputs)):
            for position, entry in enumerate(entries or []):
                entry.name = f"{kind}_{position}"
    builder = flatbuffers.Builder(len(flatbuffer))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def default_threads() -> int:
    value = os.environ.get(THREADS_VARIABLE)
    if value is None:
        return len(os.sched_getaffinity(0))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{THREADS_VARIABLE}={value!r}: expected a whole number of threads >= 1")
    return int(value)


class LiteRTFunction:
    """A .tflite model with one input and one output, called like `training.InferenceFunction`
    (an array of inputs in, an array of outputs out).

    Inputs run one at a time: XNNPACK's kernels already use every thread on one photo, and a
    batch of one needs no re-allocation when the number of products changes (batches of 16
    were 10% slower here). Each calling thread gets its own interpreter (they are not
    thread-safe; the API predicts from several threads)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no LiteRT model here")
        self.threads = threads or default_threads()
        self._local = threading.local()
        interpreter = self._interpreter()
        entry, exit_ = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        self.input_shape = tuple(entry["shape_signature"][1:])
        self.width = int(exit_["shape"][-1])
        # The same tensors in every thread's interpreter of this file.
        self._entry, self._exit = entry["index"], exit_["index"]

    def _interpreter(self) -> Interpreter:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:
            interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
            interpreter.allocate_tensors()
            self._local.interpreter = interpreter
        return interpreter

    def __call__(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        del batch_size  # one input at a time (see the class docstring)
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.path.name}: inputs of shape {inputs.shape[1:]}, expected {self.input_shape}"
            )
        interpreter = self._interpreter()
        outputs = np.empty((len(inputs), self.width), dtype=np.float32)
        for row in range(len(inputs)):
            interpreter.set_tensor(self._entry, inputs[row : row + 1])
            interpreter.invoke()
            outputs[row] = interpreter.get_tensor(self._exit)[0]
        return outputs
