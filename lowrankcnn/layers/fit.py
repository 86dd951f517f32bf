"""Fitting factors to a dense conv weight: the ``fit=True`` path of ``from_conv`` (post-training decomposition).

* :func:`fit_composite`: least squares onto a composite layer's basis (and join), exact for a weight the layer can
  represent;
* :func:`fit_separable`: truncated SVD of the kernel reshaped to ``(C_out k_h) x (C_in k_w)``;
* :func:`fit_channel_rank`: truncated SVD of the kernel reshaped to ``C_out x (C_in k_h k_w)`` (a k x k conv to
  ``rank`` channels, then a 1x1 conv);
* :func:`fit_channel_rank1`: per filter, the best rank-1 approximation of the ``C_in x (k_h k_w)`` unfolding
  (a 1x1 conv, then a depthwise k x k conv).

Every SVD split (:func:`truncated_factors`) gives ``sqrt(sigma)`` to each side, and flips signs so that the largest
entry of each right singular vector is positive: the factors are a deterministic function of the weight.
The rank-1 fit is the ALS of :mod:`lowrankcnn.layers.decompose`. Everything is computed in float64 on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Region = tuple[int, int, int, int]
"""Where a group's filters sit in the dense kernel: ``(top, left, k_h, k_w)``."""


def _masks(regions: Sequence[Region], kernel: tuple[int, int]) -> torch.Tensor:
    """``(groups, k_h * k_w)``: which kernel positions each group covers."""
    masks = torch.zeros(len(regions), *kernel, dtype=torch.bool)
    for g, (top, left, kh, kw) in enumerate(regions):
        masks[g, top : top + kh, left : left + kw] = True
    return masks.flatten(1)


def _solve_basis(w: torch.Tensor, mix: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``B`` minimizing ``||w - mix @ B||`` with ``B[b, :, p] = 0`` where ``active[b, p]`` is false.

    ``w``: ``(O, C, P)``, ``mix``: ``(O, nb)``, ``active``: ``(nb, P)``; positions decouple, so each set of
    positions with the same active basis filters is one least-squares problem.
    """
    nb, (o, c, _) = mix.shape[1], w.shape
    basis = torch.zeros(nb, c, w.shape[2], dtype=w.dtype)
    for pattern in torch.unique(active.T, dim=0):
        cols = pattern.nonzero().flatten()
        if cols.numel() == 0:
            continue
        positions = (active.T == pattern).all(dim=1).nonzero().flatten()
        rhs = w[:, :, positions].reshape(o, -1)
        solution = torch.linalg.lstsq(mix[:, cols], rhs, driver="gelsd").solution
        basis[cols[:, None, None], torch.arange(c)[None, :, None], positions[None, None, :]] = solution.reshape(
            len(cols), c, len(positions)
        )
    return basis


def _initial_mix(w: torch.Tensor, masks: torch.Tensor, widths: Sequence[int]) -> torch.Tensor:
    """Join columns group by group: the leading left singular vectors of ``w`` on the positions the group covers
    alone, or else together with groups already set (whose columns are projected out first).

    For a weight the layer represents this finds the exact column spaces, so one basis solve is then exact.
    """
    o, groups = w.shape[0], len(widths)
    starts = [sum(widths[:g]) for g in range(groups)]
    mix = torch.zeros(o, sum(widths), dtype=w.dtype)
    done = torch.zeros(groups, dtype=torch.bool)
    while not done.all():
        pending = (~done).nonzero().flatten().tolist()
        choice = None
        for only in (torch.ones(groups, dtype=torch.bool), ~done):  # alone among all groups, then among the pending
            for g in pending:
                others = masks[[h for h in range(groups) if h != g and only[h]]].any(dim=0)
                positions = (masks[g] & ~others).nonzero().flatten()
                if positions.numel():
                    choice = (g, positions)
                    break
            if choice:
                break
        g, positions = choice or (pending[0], masks[pending[0]].nonzero().flatten())
        target = w[:, :, positions].reshape(o, -1)
        set_cols = [i for h in range(groups) if done[h] for i in range(starts[h], starts[h] + widths[h])]
        if set_cols:
            q, s, _ = torch.linalg.svd(mix[:, set_cols], full_matrices=False)
            q = q[:, s > 1e-10 * s.max().clamp_min(1e-300)]
            target = target - q @ (q.T @ target)
        u = torch.linalg.svd(target, full_matrices=False).U
        n = min(widths[g], u.shape[1])
        mix[:, starts[g] : starts[g] + n] = u[:, :n]
        done[g] = True
    return mix


def fit_composite(
    weight: torch.Tensor,
    regions: Sequence[Region],
    widths: Sequence[int],
    join: bool,
    max_iter: int = 300,
    tol: float = 1e-12,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Basis filters (and join matrix) whose composite layer best approximates the dense ``weight``.

    Args:
        weight: ``(O, C, K_h, K_w)``.
        regions: per group, where its filters sit in the dense kernel.
        widths: filters per group (without a join they sum to ``O``: group ``g`` owns its slice of the outputs).
        join: fit a 1x1 join ``(O, sum(widths))`` too.

    Returns:
        Per group its filters ``(n_g, C, k_h, k_w)``; the join matrix (``None`` without a join).

    Without a join each group's filters are the dense filters of its output channels cropped to its region (the
    least-squares optimum). With a join, alternating least squares on ``W = J B``: exact basis solves given ``J``
    (:func:`_solve_basis`) and exact ``J`` solves given the basis, from :func:`_initial_mix`, until the relative
    residual stops improving by ``tol``.
    """
    w = weight.detach().cpu().double()
    o, c, kh, kw = w.shape
    w = w.reshape(o, c, kh * kw)
    masks = _masks(regions, (kh, kw))
    active = masks.repeat_interleave(torch.tensor(list(widths)), dim=0)
    if not join:
        basis = _solve_basis(w, torch.eye(o, dtype=w.dtype), active)
        mix = None
    else:
        mix = _initial_mix(w, masks, widths)
        norm, previous = w.norm().clamp_min(1e-300), float("inf")
        for _ in range(max_iter):
            basis = _solve_basis(w, mix, active)
            flat = basis.reshape(basis.shape[0], -1)
            residual = ((w.reshape(o, -1) - mix @ flat).norm() / norm).item()
            if residual < 1e-13 or previous - residual <= tol * max(residual, 1e-12):
                break
            previous = residual
            mix = torch.linalg.lstsq(flat.T, w.reshape(o, -1).T, driver="gelsd").solution.T
    full = basis.reshape(-1, c, kh, kw)
    filters, start = [], 0
    for (top, left, gh, gw), n in zip(regions, widths, strict=True):
        filters.append(full[start : start + n, :, top : top + gh, left : left + gw])
        start += n
    return filters, mix


def truncated_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``left (..., m, rank)`` and ``right (..., rank, n)`` with ``left @ right`` the best rank-``rank`` approximation
    of ``matrix`` ``(..., m, n)`` (batched over leading dims): ``U_r sqrt(S_r)`` and ``sqrt(S_r) V_r^T``, with the
    sign of each component set so the largest-magnitude entry of its row of ``V_r^T`` is positive. Components
    beyond ``min(m, n)`` are zero."""
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.shape[-1])
    u, vh = u[..., :r], vh[..., :r, :]
    root = s[..., :r, None].sqrt() * vh.gather(-1, vh.abs().argmax(dim=-1, keepdim=True)).sign()  # (..., r, 1)
    left = matrix.new_zeros(*matrix.shape[:-1], rank)
    left[..., :r] = u * root.transpose(-1, -2)
    right = matrix.new_zeros(*matrix.shape[:-2], rank, matrix.shape[-1])
    right[..., :r, :] = root * vh
    return left, right


def fit_separable(weight: torch.Tensor, mid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``1 x k_w`` conv ``(mid, C, 1, k_w)`` and a ``k_h x 1`` conv ``(O, mid, k_h, 1)`` whose composition best
    approximates the dense ``weight`` ``(O, C, k_h, k_w)``: the rank-``mid`` truncated SVD of the kernel reshaped
    to ``(O k_h) x (C k_w)`` (exact when that matrix has rank ``<= mid``)."""
    w = weight.detach().cpu().double()
    o, c, kh, kw = w.shape
    second, first = truncated_factors(w.permute(0, 2, 1, 3).reshape(o * kh, c * kw), mid)
    return first.reshape(mid, c, 1, kw), second.reshape(o, kh, mid).permute(0, 2, 1)[..., None]


def fit_channel_rank(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``k_h x k_w`` conv ``(rank, C, k_h, k_w)`` and a 1x1 conv ``(O, rank, 1, 1)`` whose composition best
    approximates the dense ``weight`` ``(O, C, k_h, k_w)`` (Eckart-Young: the residual's squared Frobenius norm is
    the sum of the squared singular values past ``rank`` of the ``O x (C k_h k_w)`` unfolding)."""
    w = weight.detach().cpu().double()
    o, c, kh, kw = w.shape
    pointwise, spatial = truncated_factors(w.reshape(o, c * kh * kw), rank)
    return spatial.reshape(rank, c, kh, kw), pointwise[:, :, None, None]


def fit_channel_rank1(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv ``(O, C, 1, 1)`` and a depthwise conv ``(O, 1, k_h, k_w)`` whose composition
    ``W[o, c, y, x] = pw[o, c] dw[o, y, x]`` best approximates the dense ``weight`` ``(O, C, k_h, k_w)``: per filter,
    the rank-1 truncated SVD of its ``C x (k_h k_w)`` unfolding (exact for filters of that form)."""
    w = weight.detach().cpu().double()
    o, c, kh, kw = w.shape
    pointwise, spatial = truncated_factors(w.reshape(o, c, kh * kw), 1)
    return pointwise[..., None], spatial.reshape(o, 1, kh, kw)
