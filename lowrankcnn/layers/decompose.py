"""Rank-1 decomposition of convolution filters (Kim et al. 2018, docs/reference.md §2).

A rank-1 filter is the outer product of a channel vector ``t`` (length C_in), a vertical vector
``q`` (length k_h) and a horizontal vector ``p`` (length k_w):
``W[o, c, y, x] = t[o, c] * q[o, y] * p[o, x]``. :func:`assemble` builds the filters from the
vectors; :func:`rank1_factors` finds the best vectors for given filters (rank-1 CP by alternating
least squares), optionally with vertical/horizontal vectors shared between filters.
"""

from __future__ import annotations

import math

import torch


def assemble(t: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Filters ``(C_out, C_in, k_h, k_w)`` from factors ``t (C_out, C_in)``, ``q (C_out, k_h)``, ``p (C_out, k_w)``."""
    return t[:, :, None, None] * (q[:, :, None] * p[:, None, :])[:, None]


def rank1_factors(
    weight: torch.Tensor,
    vertical_index: torch.Tensor,
    horizontal_index: torch.Tensor,
    tol: float = 1e-7,
    max_iter: int = 100,
    n_v: int | None = None,
    n_h: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-1 factors of every filter of ``weight`` by alternating least squares (rank-1 CP).

    Filter ``o`` is fitted by ``t[o] ⊗ q[vertical_index[o]] ⊗ p[horizontal_index[o]]``; with
    ``arange(C_out)`` for both indices every filter has its own spatial vectors. Starts from the
    leading singular vectors of the vertical and horizontal unfoldings (HOSVD), then alternates
    exact least-squares updates of ``t``, ``q`` and ``p`` until the relative residual changes by
    less than ``tol`` (or ``max_iter`` rounds). Exactly rank-1 filters are recovered exactly.

    Returns ``t (C_out, C_in)``, ``q (n_v, k_h)``, ``p (n_h, k_w)``, computed in float64 on the CPU
    (``n_v``/``n_h`` default to the largest index + 1).
    """
    w = weight.detach().cpu().double()
    c_out, _, kh, kw = w.shape
    n_v = n_v if n_v is not None else int(vertical_index.max()) + 1
    n_h = n_h if n_h is not None else int(horizontal_index.max()) + 1

    def leading(unfolded: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
        # unfolded: (C_out, k, rest); sum the Gram matrices of filters sharing a vector.
        gram = torch.zeros(n, unfolded.shape[1], unfolded.shape[1], dtype=w.dtype)
        gram.index_add_(0, index, unfolded @ unfolded.transpose(1, 2))
        return torch.linalg.eigh(gram).eigenvectors[:, :, -1]

    q = leading(w.permute(0, 2, 1, 3).reshape(c_out, kh, -1), vertical_index, n_v)
    p = leading(w.permute(0, 3, 1, 2).reshape(c_out, kw, -1), horizontal_index, n_h)
    norm = w.norm().clamp_min(1e-300)
    previous = math.inf
    for _ in range(max_iter):
        qo, po = q[vertical_index], p[horizontal_index]
        t = torch.einsum("ochw,oh,ow->oc", w, qo, po) / ((qo**2).sum(1) * (po**2).sum(1)).clamp_min(1e-300)[:, None]
        num_q = torch.zeros_like(q).index_add_(0, vertical_index, torch.einsum("ochw,oc,ow->oh", w, t, po))
        den_q = torch.zeros(n_v, dtype=w.dtype).index_add_(0, vertical_index, (t**2).sum(1) * (po**2).sum(1))
        q = num_q / den_q.clamp_min(1e-300)[:, None]
        qo = q[vertical_index]
        num_p = torch.zeros_like(p).index_add_(0, horizontal_index, torch.einsum("ochw,oc,oh->ow", w, t, qo))
        den_p = torch.zeros(n_h, dtype=w.dtype).index_add_(0, horizontal_index, (t**2).sum(1) * (qo**2).sum(1))
        p = num_p / den_p.clamp_min(1e-300)[:, None]
        residual = ((w - assemble(t, qo, p[horizontal_index])).norm() / norm).item()
        if abs(previous - residual) <= tol * max(residual, 1e-12) or residual < 1e-12:
            break
        previous = residual
    # Balance the scale between factors: q and p unit-norm, magnitude in t.
    q_norm, p_norm = q.norm(dim=1).clamp_min(1e-300), p.norm(dim=1).clamp_min(1e-300)
    t = t * (q_norm[vertical_index] * p_norm[horizontal_index])[:, None]
    return t, q / q_norm[:, None], p / p_norm[:, None]
