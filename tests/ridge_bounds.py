"""Error bounds for tests of fp32-accumulated ridge statistics: how far R² may move from the
float64 value when the batch Grams are summed in fp32, in any order (so on any CPU)."""
import numpy as np
import torch


def r2_from_grams(M, Mh, d, alpha):
    """Train and held-out R² of ridge with an unpenalised intercept, λ = α·tr(Gc)/d, as functions
    of the augmented Grams M = AᵀA, A = [X | Y | 1], of the training and held-out rows (what the
    accumulator sums), so autograd can differentiate them."""
    def centred(M):
        n, s = M[-1, -1], M[:-1, -1]
        return n, s / n, M[:-1, :-1] - torch.outer(s, s) / n
    _, mean, C = centred(M)
    Gc, Cxy, Syy = C[:d, :d], C[:d, d:], C[d:, d:].diagonal()
    w = torch.linalg.solve(Gc + alpha * Gc.trace() / d * torch.eye(d, dtype=M.dtype), Cxy)
    r2_train = 1 - (Syy - 2 * (w * Cxy).sum(0) + (w * (Gc @ w)).sum(0)) / Syy
    nh, mean_h, Ch = centred(Mh)
    delta = (mean_h[d:] - mean[d:]) - (mean_h[:d] - mean[:d]) @ w
    Syy_h = Ch[d:, d:].diagonal()
    sse_h = Syy_h - 2 * (w * Ch[:d, d:]).sum(0) + (w * (Ch[:d, :d] @ w)).sum(0) + nh * delta ** 2
    return r2_train, 1 - sse_h / Syy_h


def fp32_gram_r2_bound(X, Y, Xh, Yh, alpha, batch_rows):
    """Per target, a bound on how far the train and held-out R² move when the Grams are summed
    in fp32 (the probe's batch Grams) instead of float64, whatever order the GEMM sums in.

    Model (Higham & Mary's probabilistic rounding analysis): a batch Gram entry Σ_r a_ri a_rj
    over n ≤ `batch_rows` rows is off by at most λ √n u Σ_r |a_ri||a_rj| with probability
    ≥ 1 − 2 exp(−λ²/2) (u = 2⁻²⁴), independently across entries; a is the shifted data,
    the data shifted by the training means. Propagated to first order through
    R²(M, M_heldout) by autograd on the float64 Gram form, the entries' errors add in
    quadrature: tol = λ √n u · ‖∂R²/∂M ∘ |A|ᵀ|A|‖₂ (upper triangles), λ = 4.
    """
    # shifted by the training means, as the accumulator shifts its data (R² does not change)
    mx, my = X.mean(0), Y.mean(0)
    def aug(X, Y):
        return torch.from_numpy(np.concatenate([X - mx, Y - my, np.ones((X.shape[0], 1))], 1))
    A, Ah = aug(X, Y), aug(Xh, Yh)
    Ms = [(a.T @ a).requires_grad_(True) for a in (A, Ah)]
    r2s = torch.cat(r2_from_grams(*Ms, X.shape[1], alpha))
    scale = 4 * batch_rows ** 0.5 * 2.0 ** -24
    mags = [scale * (a.abs().T @ a.abs()) for a in (A, Ah)]
    out = []
    for r in r2s:
        grads = torch.autograd.grad(r, Ms, retain_graph=True)
        sq = 0.0
        for g, mag in zip(grads, mags):
            g = torch.triu(g + g.mT, 1) + torch.diag(g.diagonal())  # M is symmetric: one error per pair
            sq += float(((g * mag) ** 2).sum())
        out.append(sq ** 0.5)
    m = Y.shape[1]
    return r2s.detach().numpy()[:m], r2s.detach().numpy()[m:], np.array(out[:m]), np.array(out[m:])
