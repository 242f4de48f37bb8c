"""Class probes: ridge on one-hot columns (one column per class, in the same Gram as every other target),
scored on held-out rows by the argmax of the fitted scores.

Accuracy and macro-F1 need each held-out row's prediction, which no sum gives: the
weights are fitted from the training folds' sums as soon as the held-out sequences
begin (they follow the training ones), and every held-out row then adds to a confusion
matrix per site as it streams by. Nothing is stored.
"""
from __future__ import annotations

import torch


class ClassScores:
    """Confusion matrices [sites, true, predicted] of one categorical target (at one lag)."""

    def __init__(self, name: str, classes: list[str], columns: list[int], n_sites: int):
        self.name, self.classes, self.columns = name, list(classes), list(columns)
        self.confusion = torch.zeros(n_sites, len(classes), len(classes), dtype=torch.int64)
        self.weights: torch.Tensor | None = None  # [S, d, C]
        self.bias: torch.Tensor | None = None  # [S, C]
        self.alpha: list[float] = []
        self.n_train = torch.zeros(len(classes), dtype=torch.int64)

    def set_weights(self, weights: torch.Tensor, bias: torch.Tensor, alpha: list[float], n_train) -> None:
        self.weights, self.bias, self.alpha = weights.float(), bias.float(), list(alpha)
        self.n_train = torch.as_tensor(n_train, dtype=torch.int64)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x [S, rows, d] held-out rows; y [rows, m] the batch's target matrix (NaN: no value)."""
        onehot = y[:, self.columns]
        rows = (~torch.isnan(onehot[:, 0])).nonzero()[:, 0]
        if rows.numel() == 0:
            return
        true = onehot[rows].argmax(1).cpu()
        unseen = sorted({self.classes[c] for c in true.tolist() if self.n_train[c] == 0})
        if unseen:
            raise ValueError(f"target {self.name!r}: class(es) {unseen} appear in the held-out part but have no "
                             f"training rows")
        scores = torch.baddbmm(self.bias[:, None, :].to(x.device), x[:, rows.to(x.device)].float(),
                               self.weights.to(x.device))  # [S, rows, C]
        pred = scores.argmax(-1).cpu()
        C = len(self.classes)
        for s in range(pred.shape[0]):
            self.confusion[s] += torch.bincount(true * C + pred[s], minlength=C * C).reshape(C, C)

    def summary(self, site: int) -> dict:
        cm = self.confusion[site].double()
        n = float(cm.sum())
        tp, support, predicted = cm.diagonal(), cm.sum(1), cm.sum(0)
        seen = (support + predicted) > 0  # classes in the held-out truth or predictions (as sklearn's macro average)
        f1 = torch.where(seen, 2 * tp / (support + predicted).clamp_min(1), torch.zeros_like(tp))
        return {"accuracy": float(tp.sum() / n) if n else None,
                "macro_f1": float(f1[seen].mean()) if n else None,
                "alpha": self.alpha[site] if self.alpha else None,
                "n_train": int(self.n_train.sum()), "n_heldout": int(n)}
