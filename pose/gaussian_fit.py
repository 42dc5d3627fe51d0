"""Batched MINPACK-style Levenberg-Marquardt fit of isotropic 2-D Gaussians, one per heatmap window.

The authors refine each absorbed joint with ``scipy.optimize.curve_fit`` (MINPACK ``lmdif``: forward-
difference Jacobian, trust region on the diagonally scaled step, at most 300 function evaluations; a fit
that ends without convergence raises and the joint stays as it was). Noisy windows make the optimizer's
*path* matter, so this follows ``lmdif``/``lmpar`` step for step (same scaling, trust-region updates,
Newton iterations on the damping parameter and convergence tests), vectorized over all windows of a
batch in float64. The linear algebra uses normal equations instead of ``lmdif``'s pivoted QR; both give
the same steps up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fit_gaussians"]

FTOL = 1.49012e-08  # scipy's leastsq defaults
XTOL = 1.49012e-08
FACTOR = 100.0  # initial trust radius = FACTOR * |D x0|
EPSMCH = float(torch.finfo(torch.float64).eps)
DWARF = float(torch.finfo(torch.float64).tiny)
FD_STEP = EPSMCH**0.5  # forward-difference step relative to |x_j|


def _residuals(theta: Tensor, a: Tensor, b: Tensor, data: Tensor, mask: Tensor) -> Tensor:
    amp, y0, x0, sigma = (theta[:, i : i + 1] for i in range(4))
    model = amp * torch.exp(-((b - x0) ** 2 + (a - y0) ** 2) / (2 * sigma**2))
    return (model - data) * mask


def _norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


def _solve(mat: Tensor, rhs: Tensor) -> Tensor:
    """Batched solve that falls back to the pseudo-inverse for singular systems."""
    sol, info = torch.linalg.solve_ex(mat, rhs.unsqueeze(-1))
    bad = (info != 0) | ~torch.isfinite(sol).all(dim=(1, 2))
    if bool(bad.any()):
        sol = torch.where(bad.view(-1, 1, 1), torch.linalg.pinv(mat) @ rhs.unsqueeze(-1), sol)
    return sol.squeeze(-1)


def _quad_inv(mat: Tensor, q: Tensor) -> Tensor:
    """q^T mat^-1 q per batch entry."""
    return (q * _solve(mat, q)).sum(-1)


def _lmpar(jtj: Tensor, jtf: Tensor, diag: Tensor, delta: Tensor, par: Tensor) -> tuple[Tensor, Tensor]:
    """MINPACK ``lmpar``: damping ``par`` so that ``|D x| ~ delta`` (10% band), and the step ``-x``."""
    d2 = torch.diag_embed(diag**2)
    x = _solve(jtj, jtf)  # Gauss-Newton: J x ~ f
    dxnorm = _norm(diag * x)
    fp = dxnorm - delta
    gauss_newton = fp <= 0.1 * delta
    q = diag * (diag * x) / dxnorm.clamp(min=DWARF).unsqueeze(-1)
    parl = (fp / delta) / _quad_inv(jtj, q)
    parl = torch.where(torch.isfinite(parl), parl, torch.zeros_like(parl)).clamp(min=0)
    gnorm = _norm(jtf / diag)
    paru = gnorm / delta
    paru = torch.where(paru == 0, DWARF / delta.clamp(max=0.1), paru)
    par = torch.minimum(torch.maximum(par, parl), paru)
    par = torch.where(par == 0, gnorm / dxnorm.clamp(min=DWARF), par)
    active = ~gauss_newton
    for it in range(1, 11):
        par = torch.where(active & (par == 0), torch.clamp(0.001 * paru, min=DWARF), par)
        mat = jtj + par.view(-1, 1, 1) * d2
        x_new = _solve(mat, jtf)
        x = torch.where(active.unsqueeze(-1), x_new, x)
        dxnorm = _norm(diag * x)
        prev_fp, fp_new = fp, dxnorm - delta
        fp = torch.where(active, fp_new, fp)
        stop = (fp.abs() <= 0.1 * delta) | ((parl == 0) & (fp <= prev_fp) & (prev_fp < 0)) | (it == 10)
        newton = active & ~stop
        q = diag * (diag * x) / dxnorm.clamp(min=DWARF).unsqueeze(-1)
        parc = (fp / delta) / _quad_inv(mat, q)
        parl = torch.where(newton & (fp > 0), torch.maximum(parl, par), parl)
        paru = torch.where(newton & (fp < 0), torch.minimum(paru, par), paru)
        par = torch.where(newton, torch.maximum(parl, par + parc), par)
        active = newton
    par = torch.where(gauss_newton, torch.zeros_like(par), par)
    return -x, par


def fit_gaussians(
    a: Tensor, b: Tensor, data: Tensor, mask: Tensor, start: Tensor, max_evals: int = 300
) -> tuple[Tensor, Tensor]:
    """Least-squares fit of ``A exp(-((b - x0)^2 + (a - y0)^2) / (2 sigma^2))`` to ``data``.

    Args:
        a, b: Tensor[M, L] float64 sample coordinates (row-like, column-like).
        data: Tensor[M, L] float64 values; ``mask`` (bool, same shape) marks the real samples.
        start: Tensor[M, 4] initial ``(A, y0, x0, sigma)``.
        max_evals: function-evaluation budget per fit (``maxfev``).

    Returns:
        ``(params, ok)``: Tensor[M, 4] and Tensor[M] bool; ``ok`` is False where ``curve_fit`` would raise
        (budget exhausted, tolerances unreachable, non-finite values).
    """
    m, n = start.shape
    maskf = mask.to(data.dtype)
    dev, dt = data.device, data.dtype

    def residuals(theta: Tensor) -> Tensor:
        return _residuals(theta, a, b, data, maskf)

    x = start.clone()
    fvec = residuals(x)
    fnorm = _norm(fvec)
    nfev = torch.ones(m, dtype=torch.long, device=dev)
    first = torch.ones(m, dtype=torch.bool, device=dev)  # before the first Jacobian
    need_jac = torch.ones(m, dtype=torch.bool, device=dev)
    iter_one = torch.ones(m, dtype=torch.bool, device=dev)  # lmdif's iter == 1
    success = torch.zeros(m, dtype=torch.bool, device=dev)
    failed = ~torch.isfinite(fnorm)
    diag = torch.ones(m, n, dtype=dt, device=dev)
    delta = torch.zeros(m, dtype=dt, device=dev)
    xnorm = torch.zeros(m, dtype=dt, device=dev)
    par = torch.zeros(m, dtype=dt, device=dev)
    gnorm = torch.zeros(m, dtype=dt, device=dev)
    jac = torch.zeros(m, a.shape[1], n, dtype=dt, device=dev)
    for step in range(max_evals):
        active = ~success & ~failed
        if step % 4 == 0 and not bool(active.any()):  # one host sync every few steps to stop early
            break
        # Outer iteration: forward-difference Jacobian, column norms, scaling, gradient test.
        outer = active & need_jac
        cols = []
        for j in range(n):
            h = FD_STEP * x[:, j].abs()
            h = torch.where(h == 0, torch.full_like(h, FD_STEP), h)
            xp = x.clone()
            xp[:, j] = x[:, j] + h
            cols.append((residuals(xp) - fvec) / h.unsqueeze(-1))
        jac = torch.where(outer.view(m, 1, 1), torch.stack(cols, -1), jac)
        nfev += outer.long() * n
        acnorm = _norm(jac.transpose(1, 2))  # (M, n)
        init = outer & first
        diag = torch.where(init.unsqueeze(-1), torch.where(acnorm == 0, torch.ones_like(acnorm), acnorm), diag)
        xnorm = torch.where(init, _norm(diag * x), xnorm)
        delta = torch.where(init, torch.where(xnorm == 0, torch.full_like(xnorm, FACTOR), FACTOR * xnorm), delta)
        first &= ~outer
        jtf = (jac.transpose(1, 2) @ fvec.unsqueeze(-1)).squeeze(-1)
        g = torch.where(acnorm > 0, (jtf / fnorm.clamp(min=DWARF).unsqueeze(-1)).abs() / acnorm.clamp(min=DWARF), 0.0)
        gnorm = torch.where(outer, torch.where(fnorm > 0, g.amax(-1), torch.zeros_like(fnorm)), gnorm)
        success |= outer & (gnorm <= 0)  # gtol = 0: an exact stationary point
        diag = torch.where(outer.unsqueeze(-1), torch.maximum(diag, acnorm), diag)
        active = active & ~success
        need_jac = need_jac & ~outer
        # Inner iteration: trust-region step, trial evaluation, radius update, tests.
        jtj = jac.transpose(1, 2) @ jac
        p, new_par = _lmpar(jtj, jtf, diag, delta, par)
        par = torch.where(active, new_par, par)
        pnorm = _norm(diag * p)
        delta = torch.where(active & iter_one, torch.minimum(delta, pnorm), delta)
        trial = x + p
        f1 = residuals(trial)
        fnorm1 = _norm(f1)
        nfev += active.long()
        actred = torch.where(0.1 * fnorm1 < fnorm, 1 - (fnorm1 / fnorm) ** 2, torch.full_like(fnorm, -1.0))
        temp1 = _norm((jac @ p.unsqueeze(-1)).squeeze(-1)) / fnorm
        temp2 = par.sqrt() * pnorm / fnorm
        prered = temp1**2 + temp2**2 / 0.5
        dirder = -(temp1**2 + temp2**2)
        ratio = torch.where(prered != 0, actred / prered, torch.zeros_like(prered))
        shrink = torch.where(actred >= 0, torch.full_like(actred, 0.5), 0.5 * dirder / (dirder + 0.5 * actred))
        shrink = torch.where((0.1 * fnorm1 >= fnorm) | (shrink < 0.1), torch.full_like(shrink, 0.1), shrink)
        low = active & (ratio <= 0.25)
        high = active & ~low & ((par == 0) | (ratio >= 0.75))
        delta = torch.where(low, shrink * torch.minimum(delta, pnorm / 0.1), torch.where(high, pnorm / 0.5, delta))
        par = torch.where(low, par / shrink, torch.where(high, 0.5 * par, par))
        accept = active & (ratio >= 1e-4)
        x = torch.where(accept.unsqueeze(-1), trial, x)
        fvec = torch.where(accept.unsqueeze(-1), f1, fvec)
        fnorm = torch.where(accept, fnorm1, fnorm)
        xnorm = torch.where(accept, _norm(diag * x), xnorm)
        iter_one &= ~accept
        need_jac |= accept
        converged = ((actred.abs() <= FTOL) & (prered <= FTOL) & (0.5 * ratio <= 1)) | (delta <= XTOL * xnorm)
        success |= active & converged
        stuck = (
            (nfev >= max_evals)
            | ((actred.abs() <= EPSMCH) & (prered <= EPSMCH) & (0.5 * ratio <= 1))
            | (delta <= EPSMCH * xnorm)
            | (gnorm <= EPSMCH)
            | ~torch.isfinite(fnorm1)
        )
        failed |= active & ~converged & stuck
    ok = success & ~failed & torch.isfinite(x).all(-1)
    return x, ok
