"""A linear SVM (squared hinge, L2, one-vs-rest) that trains on the float32 TF-IDF matrix as it
is: scikit-learn's LinearSVC, with the same objective, converts it to float64 and liblinear
copies that again, 3.5x the memory (`svm_solver`). The fitted model is a plain scikit-learn
linear classifier: predicting needs NumPy only, not the solver's Numba."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.extmath import safe_sparse_dot
from sklearn.utils.validation import check_array, check_is_fitted


class FloatLinearSVC(ClassifierMixin, BaseEstimator):
    """LinearSVC's model (loss="squared_hinge", dual, intercept_scaling=1) fitted without a
    float64 copy. As liblinear, each class's problem weighs its own products by its class
    weight and the others by 1."""

    def __init__(
        self,
        C: float = 1.0,
        class_weight: dict | str | None = None,
        tol: float = 1e-4,
        max_iter: int = 5000,
        random_state: int = 0,
    ) -> None:
        self.C = C
        self.class_weight = class_weight
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> FloatLinearSVC:
        # Imported here, not at the top: a process that only predicts (the API, the batch
        # command) never pays Numba's second of import.
        from rakuten_classifier.svm_solver import solve

        # The solver reads each row's values in any order: no sorted copy of the indices.
        X = sparse.csr_matrix(check_array(X, accept_sparse="csr", dtype=[np.float32, np.float64]))
        self.classes_, labels = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"FloatLinearSVC needs at least 2 classes, got {self.classes_}")
        weights = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
        costs = self.C * np.asarray(weights, dtype=np.float64)
        if len(self.classes_) == 2:  # one problem: the second class against the first
            problems, c_positive, c_negative = np.array([1]), costs[1:], costs[:1]
        else:
            problems = np.arange(len(self.classes_))
            c_positive, c_negative = costs, np.full(len(costs), float(self.C))
        solution, self.n_iter_ = solve(
            X, labels, problems, c_positive, c_negative, self.tol, self.max_iter, self.random_state
        )
        self.coef_ = solution[:, :-1]
        self.intercept_ = solution[:, -1].copy()
        self.n_features_in_ = X.shape[1]
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_coef_columns", None)  # derived: the pickle keeps its bytes
        return state

    def decision_function(self, X: Any) -> np.ndarray:
        """Products x classes scores (one column, raveled, for two classes), as LinearSVC's."""
        check_is_fitted(self, "coef_")
        X = check_array(X, accept_sparse="csr", dtype=[np.float64, np.float32])
        if "_coef_columns" not in vars(self):
            # SciPy's sparse product wants the dense factor C-contiguous and copies `coef_.T`
            # (a strided view) on every call otherwise: most of a small batch's time. The
            # same values in the same order, so the same scores to the bit.
            self._coef_columns = np.ascontiguousarray(self.coef_.T)
        scores = safe_sparse_dot(X, self._coef_columns, dense_output=True) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)
        best = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_[best]
