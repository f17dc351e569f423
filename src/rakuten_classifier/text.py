"""Text: the fitted vocabularies and the two text classifiers (TF-IDF + linear model, Keras
network), and the train_text stage. Both take the model text that `preprocess.product_text`
makes of a product's title and description.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.utils.sparsefuncs_fast import inplace_csr_row_normalize_l2
from stop_words import get_stop_words

from rakuten_classifier.calibration import fit_temperature, log_probabilities, softmax
from rakuten_classifier.char_ngrams import CharNgramIndex
from rakuten_classifier.config import logger
from rakuten_classifier.data import load_labels, load_split
from rakuten_classifier.files import atomic_path, read_json, read_pickle, write_json, write_pickle
from rakuten_classifier.hashed_tokens import WORD_PATTERN, CollisionError
from rakuten_classifier.linear_svm import FloatLinearSVC
from rakuten_classifier.metrics import classification_scores
from rakuten_classifier.preprocess import clean_text
from rakuten_classifier.sentence_encoder import SentenceEmbedding, encoder_names
from rakuten_classifier.training import (
    InferenceFunction,
    balanced_class_weights,
    compile_classifier,
    fit_keras,
    save_keras_model,
    set_seeds,
)
from rakuten_classifier.word_ngrams import WordNgramCounter
from rakuten_classifier.word_vectors import MeanWordVector, VectorTable, load_vector_table

# --- fitted on the train split by the `tokenize` stage -------------------------------------

TFIDF_FILE = "tfidf.pkl"
VOCABULARY_FILE = "vocabulary.txt"


def stop_word_list(languages: list[str]) -> list[str]:
    """Stop words of the given languages (the catalogue is mostly French, some English/German),
    cut into tokens the way the word vectoriser cuts text ("aujourd'hui" -> "aujourd", "hui")."""
    words: set[str] = set()
    for language in languages:
        for word in get_stop_words(language):
            words.update(re.findall(WORD_PATTERN, clean_text(word).lower()))
    return sorted(words)


@functools.lru_cache(maxsize=8)
def _stemmer(language: str) -> Any:
    # Imported on first use: NLTK takes 1-2 s to import, which every command and stage that
    # loads a text model would pay for a stemmer that is off by default.
    from nltk.stem.snowball import SnowballStemmer

    return SnowballStemmer(language)


@functools.lru_cache(maxsize=1 << 18)
def _stem(language: str, word: str) -> str:
    # A catalogue repeats its words: each is stemmed once (NLTK's Snowball is pure Python).
    return _stemmer(language).stem(word)


class StemmedWords:
    """The word analyser's tokens cut to their Snowball stems ("chaises", "chaise" -> "chais"),
    so a plural or a feminine seen in training matches at prediction time. Only the language
    is pickled: the stemmer is NLTK's own, no data files."""

    def __init__(self, language: str) -> None:
        self.language = language

    def __call__(self, text: str) -> list[str]:
        return [_stem(self.language, token) for token in re.findall(WORD_PATTERN, text)]

    def __getstate__(self) -> dict[str, Any]:
        return {"language": self.language}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.language = state["language"]


class StableTfidfVectorizer(TfidfVectorizer):
    """TfidfVectorizer that pickles to the same bytes for the same fit: scikit-learn keeps the
    memory address of its stop-word list (`_stop_words_id`, a cache key) in the object.
    A fitted vectoriser counts its character or word n-grams with NumPy (`char_ngrams`,
    `word_ngrams`): the same matrix, several times sooner than scikit-learn's loops."""

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_stop_words_id", None)
        state.pop("_ngram_index", None)  # rebuilt from the vocabulary on first use
        return state

    def _fast_index(self) -> CharNgramIndex | WordNgramCounter | None:
        if "_ngram_index" not in vars(self):
            plain = (
                self.lowercase
                and self.preprocessor is None
                and self.strip_accents is None
                and self.input == "content"
            )
            index: CharNgramIndex | WordNgramCounter | None = None
            try:
                if plain and self.analyzer == "char_wb" and self.ngram_range[0] <= 3:
                    index = CharNgramIndex(self.vocabulary_, self.ngram_range)
                elif plain and self.analyzer == "word" and self.tokenizer is None:
                    index = WordNgramCounter(
                        self.vocabulary_, self.ngram_range, self.token_pattern,
                        self.get_stop_words(),
                    )  # fmt: skip
            except (CollisionError, ValueError):
                index = None  # scikit-learn's own loop
            self._ngram_index = index
        return self._ngram_index

    def transform(self, raw_documents: Any) -> Any:
        index = self._fast_index() if hasattr(self, "vocabulary_") else None
        if index is None or isinstance(raw_documents, str):
            return super().transform(raw_documents)
        counts = index.counts(list(raw_documents), self.dtype)
        if self.binary:
            counts.data.fill(1)
        weights = self._tfidf
        if weights.norm not in ("l2", None):
            return weights.transform(counts, copy=False)
        # TfidfTransformer.transform's own steps, without its checks of the input (half a
        # millisecond a call: most of one product's cost): the same arithmetic, the same bits.
        if weights.sublinear_tf:
            np.log(counts.data, counts.data)
            counts.data += 1.0
        if hasattr(weights, "idf_"):
            counts.data *= weights.idf_[counts.indices]
        if weights.norm == "l2":
            inplace_csr_row_normalize_l2(counts)
        return counts


def sentence_blocks(params: dict[str, Any]) -> list[tuple[str, SentenceEmbedding]]:
    """One block per sentence encoder named in `sentence_encoder` (a name or a list of names;
    each its own `sentence_encoder_weight`, one number or one per encoder): encoders trained
    on different data err on different products."""
    names = encoder_names(params)
    if not names:  # null turns the blocks off, whatever the weights say
        return []
    weights = params.get("sentence_encoder_weight", 1.0)
    weights = list(weights) if isinstance(weights, list) else [weights] * len(names)
    if len(weights) != len(names):
        raise ValueError(
            f"tokenize.sentence_encoder_weight: {len(weights)} weights for {len(names)} encoders"
        )
    max_chars = params.get("sentence_encoder_max_chars", 500)
    # One encoder keeps the block name of the bundles trained before lists were allowed.
    return [
        ("sentence" if len(names) == 1 else f"sentence_{name}",
         SentenceEmbedding(name, weight, max_chars))
        for name, weight in zip(names, weights, strict=True)
    ]  # fmt: skip


def build_tfidf(params: dict[str, Any]) -> FeatureUnion:
    """Word and character n-gram TF-IDF side by side: characters cope with typos and plurals;
    with `word_vectors`, each text's mean French word vector too (words unseen in training)."""
    stop_words = stop_word_list(params.get("stop_words") or []) or None
    stemmed = StemmedWords(params["stemmer"]) if params.get("stemmer") else None
    if stemmed is not None and stop_words:
        # The stop words as the tokens they become (stemming a stem again changes a few).
        stems = {stem for word in stop_words for stem in stemmed(word)}
        stop_words = sorted(stems | {stem for word in stems for stem in stemmed(word)})
    word = StableTfidfVectorizer(
        analyzer="word",
        tokenizer=stemmed,
        token_pattern=None if stemmed else WORD_PATTERN,
        ngram_range=(1, params["word_ngram_max"]),
        min_df=params["min_df"],
        max_features=params["word_max_features"],
        stop_words=stop_words,
        sublinear_tf=True,
        dtype=np.float32,
    )
    char = StableTfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(params["char_ngram_min"], params["char_ngram_max"]),
        min_df=params["min_df"],
        max_features=params["char_max_features"],
        sublinear_tf=True,
        dtype=np.float32,
    )
    blocks = [("word", word), ("char", char)]
    blocks += sentence_blocks(params)
    if params.get("word_vectors"):
        vectors = MeanWordVector(
            params["word_vectors"], WORD_PATTERN, params.get("word_vector_weight", 1.0)
        )
        blocks.append(("vectors", vectors))
    return FeatureUnion(blocks)


def fit_vocabulary(texts: list[str], size: int) -> list[str]:
    """The `size` most frequent whitespace tokens of the train split (ties: alphabetical), for
    the Keras network's TextVectorization layer, which splits the same way."""
    counts = Counter(token for text in texts for token in text.lower().split())
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [token for token, _ in ranked[:size]]


def fit_tokenizers(texts: list[str], params: dict[str, Any]) -> tuple[FeatureUnion, list[str]]:
    """Both text representations, fitted on the given texts (the train split in the pipeline,
    every labelled product for the final refit)."""
    return build_tfidf(params).fit(texts), fit_vocabulary(texts, params["vocabulary_size"])


def save_tokenizers(out_dir: Path, tfidf: FeatureUnion, vocabulary: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_pickle(out_dir / TFIDF_FILE, tfidf)
    with atomic_path(out_dir / VOCABULARY_FILE) as tmp:
        tmp.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")


def load_tfidf(tokenizer_dir: Path) -> FeatureUnion:
    return read_pickle(tokenizer_dir / TFIDF_FILE)


def load_vocabulary(tokenizer_dir: Path) -> list[str]:
    return (tokenizer_dir / VOCABULARY_FILE).read_text(encoding="utf-8").splitlines()


# --- the text classifiers -------------------------------------------------------------------

TEXT_MODEL_JSON = "text_model.json"


class LinearTextModel:
    """TF-IDF features and a linear classifier in one scikit-learn pipeline, raw text in."""

    kind = "linear"
    MODEL_FILE = "model.pkl"
    OLD_MODEL_FILE = "model.joblib"  # bundles built before the switch to plain pickle

    def __init__(self, pipeline: Pipeline, temperature: float = 1.0) -> None:
        self.pipeline = pipeline
        self.temperature = temperature

    def logits(self, texts: list[str]) -> np.ndarray:
        union, classifier = self.pipeline.steps[0][1], self.pipeline.steps[-1][1]
        plain = (
            len(self.pipeline.steps) == 2
            and isinstance(union, FeatureUnion)
            and union.transformer_weights is None
            and all(hasattr(block, "transform") for _, block in union.transformer_list)
        )
        if not plain:
            return np.asarray(self.pipeline.decision_function(texts), dtype=np.float64)
        # The blocks side by side as FeatureUnion stacks them, without its parallel and
        # output wrappers: about a millisecond of one product's cost.
        features = sparse.hstack([block.transform(texts) for _, block in union.transformer_list])
        return np.asarray(classifier.decision_function(features.tocsr()), dtype=np.float64)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(texts), self.temperature)

    def save(self, out_dir: Path) -> None:
        write_pickle(out_dir / self.MODEL_FILE, self.pipeline)

    @classmethod
    def load(cls, model_dir: Path, temperature: float) -> LinearTextModel:
        if not (model_dir / cls.MODEL_FILE).exists() and (model_dir / cls.OLD_MODEL_FILE).exists():
            return cls(joblib.load(model_dir / cls.OLD_MODEL_FILE), temperature)
        return cls(read_pickle(model_dir / cls.MODEL_FILE), temperature)


class KerasTextModel:
    """A Keras network that takes the raw (cleaned) strings: its TextVectorization is inside."""

    kind = "cnn"
    MODEL_FILE = "model.keras"

    def __init__(self, model: Any, temperature: float = 1.0) -> None:
        self.model = model
        self.temperature = temperature
        self.forward = InferenceFunction(model)

    def logits(self, texts: list[str]) -> np.ndarray:
        # The network ends in a softmax: its log-probabilities serve as logits.
        lowered = [text.lower() for text in texts]  # as the network was trained (train_cnn_text)
        return log_probabilities(self.forward(np.asarray(lowered, dtype=object), 256))

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(texts), self.temperature)

    def save(self, out_dir: Path) -> None:
        save_keras_model(self.model, out_dir / self.MODEL_FILE)

    @classmethod
    def load(cls, model_dir: Path, temperature: float) -> KerasTextModel:
        import keras

        return cls(keras.models.load_model(model_dir / cls.MODEL_FILE), temperature)


TextModel = LinearTextModel | KerasTextModel
_TEXT_MODEL_KINDS = {cls.kind: cls for cls in (LinearTextModel, KerasTextModel)}


def save_text_model(model: TextModel, out_dir: Path, extra: dict[str, Any] | None = None) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir)
    write_json(
        out_dir / TEXT_MODEL_JSON,
        {"kind": model.kind, "temperature": model.temperature, **(extra or {})},
    )


def load_text_model(model_dir: Path) -> TextModel:
    model_dir = Path(model_dir)
    spec = read_json(model_dir / TEXT_MODEL_JSON)
    kind = spec["kind"]
    if kind not in _TEXT_MODEL_KINDS:
        raise ValueError(f"{model_dir / TEXT_MODEL_JSON}: unknown text model kind '{kind}'")
    logger.debug("loading %s text model from %s", kind, model_dir)
    return _TEXT_MODEL_KINDS[kind].load(model_dir, spec["temperature"])


# --- training (the train_text stage) --------------------------------------------------------


def train_linear_text(
    tfidf: FeatureUnion,
    train_texts: list[str],
    train_y: np.ndarray,
    params: dict[str, Any],
    seed: int,
) -> LinearTextModel:
    """A linear SVM or logistic regression on the (already fitted) TF-IDF features."""
    class_weight = params.get("class_weight")
    if params["classifier"] == "svm":
        # LinearSVC's model, trained on the float32 matrix without liblinear's two float64
        # copies (a third of the memory; `linear_svm`).
        classifier = FloatLinearSVC(
            C=params["C"], class_weight=class_weight, max_iter=5000, random_state=seed
        )
    elif params["classifier"] == "logreg":
        classifier = LogisticRegression(
            C=params["C"], class_weight=class_weight, max_iter=3000, random_state=seed
        )
    else:
        raise ValueError(f"train_text.linear.classifier: unknown '{params['classifier']}'")
    # The vectoriser was fitted on the train split by the tokenize stage: keep it as it is.
    classifier.fit(tfidf.transform(train_texts), train_y)
    return LinearTextModel(Pipeline([("tfidf", tfidf), ("classifier", classifier)]))


def embedding_matrix(vocabulary: list[str], table: VectorTable, seed: int = 0) -> np.ndarray:
    """Initial embeddings for TextVectorization's indices (padding, out-of-vocabulary, then
    `vocabulary`): a word's unit-length French vector where the table has it (punctuation
    stripped, as whitespace tokens keep it), small random values elsewhere, as Keras's own
    initialiser would give."""
    width = table.vectors.shape[1]
    matrix = np.random.default_rng(seed).uniform(-0.05, 0.05, (len(vocabulary) + 2, width))
    for index, token in enumerate(vocabulary, start=2):
        row = table.rows.get(token, table.rows.get(token.strip(string.punctuation + "«»")))
        if row is not None:
            vector = table.vectors[row].astype(np.float64)
            matrix[index] = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return matrix.astype(np.float32)


def build_text_cnn(vocabulary: list[str], n_classes: int, params: dict[str, Any]) -> Any:
    """Raw strings in, class probabilities out: TextVectorization, embeddings (initialised
    from French word vectors with `word_vectors`), parallel Conv1D with max-pooling (a
    Kim-style text CNN), dropout, softmax."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(), dtype="string", name="text")
    tokens = layers.TextVectorization(
        vocabulary=vocabulary,
        standardize=None,  # its input is lowercased by KerasTextModel, as in training
        split="whitespace",
        output_sequence_length=params["sequence_length"],
        name="vectorize",
    )(inputs)
    if params.get("word_vectors"):
        matrix = embedding_matrix(vocabulary, load_vector_table(params["word_vectors"]))
        size, initializer = matrix.shape[1], keras.initializers.Constant(matrix)
    else:
        size, initializer = params["embedding_dim"], "uniform"
    embedded = layers.Embedding(
        len(vocabulary) + 2, size, embeddings_initializer=initializer, name="embedding"
    )(tokens)
    embedded = layers.SpatialDropout1D(params["dropout"] / 2)(embedded)
    pooled = [
        layers.GlobalMaxPooling1D()(
            layers.Conv1D(params["filters"], size, activation="relu", padding="same")(embedded)
        )
        for size in params["kernel_sizes"]
    ]
    features = layers.Concatenate()(pooled) if len(pooled) > 1 else pooled[0]
    features = layers.Dropout(params["dropout"])(features)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(features)
    model = keras.Model(inputs, outputs, name="text_cnn")
    compile_classifier(model, params["learning_rate"])
    return model


def train_cnn_text(
    vocabulary: list[str],
    train: tuple[list[str], np.ndarray],
    val: tuple[list[str], np.ndarray] | None,
    n_classes: int,
    params: dict[str, Any],
    seed: int,
    live: Any = None,
    epochs: int | None = None,
) -> tuple[KerasTextModel, int]:
    """The Keras text network, early-stopped on `val`, or trained `epochs` epochs without it;
    returns the model and the number of epochs worth keeping."""
    import tensorflow as tf

    set_seeds(seed)

    def dataset(texts: list[str], y: np.ndarray, shuffle: bool) -> tf.data.Dataset:
        lowered = np.asarray([text.lower() for text in texts], dtype=object)
        data = tf.data.Dataset.from_tensor_slices((lowered, y))
        if shuffle:
            data = data.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
        return data.batch(params["batch_size"]).prefetch(tf.data.AUTOTUNE)

    model = build_text_cnn(vocabulary, n_classes, params)
    class_weight = (
        balanced_class_weights(train[1], n_classes)
        if params.get("class_weight") == "balanced"
        else None
    )
    best = fit_keras(
        model,
        dataset(*train, shuffle=True),
        dataset(*val, shuffle=False) if val is not None else None,
        epochs=epochs or params["epochs"],
        patience=params["patience"],
        class_weight=class_weight,
        live=live,
    )
    return KerasTextModel(model), best


def fit_text_model(
    params: dict[str, Any],
    tokenizers: tuple[FeatureUnion, list[str]],
    train: tuple[list[str], np.ndarray],
    val: tuple[list[str], np.ndarray] | None,
    n_classes: int,
    seed: int,
    live: Any = None,
    epochs: int | None = None,
) -> tuple[TextModel, int]:
    """The text model that `params["model"]` selects, and its useful epoch count (0: none)."""
    kind = params["model"]
    tfidf, vocabulary = tokenizers
    if kind == "linear":
        return train_linear_text(tfidf, *train, params["linear"], seed), 0
    if kind == "cnn":
        cnn = params["cnn"]
        return train_cnn_text(vocabulary, train, val, n_classes, cnn, seed, live, epochs)
    raise ValueError(f"train_text.model: unknown '{kind}' (linear or cnn)")


def train(
    params: dict[str, Any],
    seed: int,
    processed_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    live: Any = None,
) -> dict[str, float]:
    """The train_text stage: fit the selected model on train, calibrate it on validation,
    save it, and return (and log) its validation scores."""
    n_classes = len(load_labels(processed_dir).codes)
    train_split, val_split = load_split("train", processed_dir), load_split("val", processed_dir)
    train_data = (train_split["text"].tolist(), train_split["label"].to_numpy())
    val_data = (val_split["text"].tolist(), val_split["label"].to_numpy())
    tokenizers = (load_tfidf(tokenizer_dir), load_vocabulary(tokenizer_dir))
    model, epochs = fit_text_model(params, tokenizers, train_data, val_data, n_classes, seed, live)
    model.temperature = fit_temperature(model.logits(val_data[0]), val_data[1])
    scores = classification_scores(val_data[1], model.predict_proba(val_data[0]).argmax(axis=1))
    save_text_model(model, out_dir, {"model": params["model"], "epochs": epochs})
    logger.info("text model: validation %s (temperature %.3g)", scores, model.temperature)
    return scores


def fit_from_spec(
    params: dict[str, Any],
    frame: pd.DataFrame,
    n_classes: int,
    spec: dict[str, Any],
    features_dir: Path | None = None,
) -> TextModel:
    """The validated recipe (`spec`: its text_model.json) trained from scratch on other rows,
    tokenizers included (`recipes` calls it for the final refit and out-of-fold predictions).
    No validation split is left, so the epoch count and temperature are the validated run's."""
    texts, labels = frame["text"].tolist(), frame["label"].to_numpy()
    tokenizers = fit_tokenizers(texts, params["tokenize"])
    model, _ = fit_text_model(
        params["train_text"],
        tokenizers,
        (texts, labels),
        None,
        n_classes,
        params["seed"],
        epochs=spec["epochs"] or None,
    )
    model.temperature = spec["temperature"]
    return model
