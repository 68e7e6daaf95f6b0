"""Restoration losses of Lobato et al. (2023), eqs. (2)–(15), and the baselines' losses.

Every pixel loss has the signature ``loss(pred, target, *, options) -> Tensor, shape (B,)``: one value per
sample, so a trainer can weight, mask or log samples before ``.mean()``. Tensors have shape (B, C, H, W) or
(B, H, W); statistics ("E", "Std") are taken per sample over all its pixels (and channels).
The adversarial losses take the critic logits ``C(y)`` (``d_real``) and ``C(y_g)`` (``d_fake``) of
:class:`~stemquant.restore.PatchDiscriminator` instead of images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

SIGMA_MIN = 1e-3
"""Default σ_min of eqs. (5) and (7) [intensity units of the normalised image]. Not published; the networks
see images normalised to zero mean and unit standard deviation (docs/restoration.md), so 1e-3 only matters for
(nearly) flat samples and windows."""

MLWT_WINDOWS = (2, 4, 8, 16)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Check that pred and target are tensors of equal shape (B, C, H, W) or (B, H, W)."""
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim not in (3, 4):
            raise ValueError(f"{name} must have shape (B, C, H, W) or (B, H, W), got {tuple(t.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over all dimensions but the first."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def _per_sample_std(x: torch.Tensor) -> torch.Tensor:
    """Population standard deviation over all dimensions but the first."""
    return x.reshape(x.shape[0], -1).std(dim=1, correction=0)


def _sample_weight(target: torch.Tensor, sigma_min: float) -> torch.Tensor:
    """w_y = 1 / max(σ_min, Std{y}) per sample, eq. (5), shape (B,)."""
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be positive [intensity], got {sigma_min}")
    return 1.0 / _per_sample_std(target).clamp_min(sigma_min)


def _broadcast(w: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor to broadcast against ``like``."""
    return w.reshape((-1,) + (1,) * (like.ndim - 1))


def l1_loss(pred: torch.Tensor, target: torch.Tensor, *, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Contrast-weighted L1 loss, shape (B,).

    Implements eqs. (4)–(5) of Lobato et al. (2023): ``mean(w_y |y - y_g|)`` with
    ``w_y = 1 / max(σ_min, Std{y})`` computed per sample from the target, so that every example counts the
    same regardless of its contrast. Invariant to ``(pred, target) -> (a·pred + b, a·target + b)`` for
    ``a > 0`` when ``Std{target} > σ_min``.

    Parameters
    ----------
    pred, target : Tensor, shape (B, C, H, W) or (B, H, W)
        Generated image y_g and ground truth y [intensity].
    sigma_min : float
        Lower bound of the standard deviation [intensity].

    Returns
    -------
    Tensor, shape (B,)

    Examples
    --------
    >>> y = torch.rand(2, 1, 16, 16)
    >>> l1_loss(y, y)
    tensor([0., 0.])
    """
    _check_pair(pred, target)
    w = _sample_weight(target, sigma_min)
    return w * _per_sample_mean((target - pred).abs())


def l2_loss(pred: torch.Tensor, target: torch.Tensor, *, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Contrast-weighted L2 loss, shape (B,).

    Implements eq. (6) of Lobato et al. (2023): ``mean(w_y |y - y_g|²)`` with ``w_y`` of eq. (5) (the same
    weight as the L1 loss, not squared, exactly as published; hence not scale invariant).

    Parameters
    ----------
    pred, target : Tensor, shape (B, C, H, W) or (B, H, W)
        Generated image y_g and ground truth y [intensity].
    sigma_min : float
        Lower bound of the standard deviation [intensity].

    Returns
    -------
    Tensor, shape (B,)
    """
    _check_pair(pred, target)
    w = _sample_weight(target, sigma_min)
    return w * _per_sample_mean((target - pred) ** 2)


def local_whitening(image: torch.Tensor, window: int, *, sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Local whitening transform over ``window × window`` neighbourhoods, same shape as ``image``.

    Implements eq. (7) of Lobato et al. (2023):
    ``y^S_ij = (y_ij - E_S{y}_ij) / max(σ_min, Std_S{y}_ij)``.
    The neighbourhood of pixel (i, j) is rows ``i - S//2 … i + (S-1)//2`` (and the same for columns), i.e. for
    even S it has one more pixel above/left than below/right; the image is reflection-padded at the borders.

    Parameters
    ----------
    image : Tensor, shape (B, C, H, W) or (B, H, W)
        Image [intensity]; H and W must exceed ``window // 2``.
    window : int
        Window size S [pixels], ≥ 2.
    sigma_min : float
        Lower bound of the local standard deviation [intensity].

    Returns
    -------
    Tensor, same shape as ``image``
    """
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an integer >= 2 [pixels], got {window!r}")
    if not sigma_min > 0:
        raise ValueError(f"sigma_min must be positive [intensity], got {sigma_min}")
    if min(image.shape[-2:]) <= window // 2:
        raise ValueError(f"image of shape {tuple(image.shape)} is too small for a {window}×{window} "
                         f"whitening window; H and W must exceed {window // 2} pixels")
    x = image if image.ndim == 4 else image.unsqueeze(1)
    lo, hi = window // 2, (window - 1) // 2
    pad = F.pad(x, (lo, hi, lo, hi), mode="reflect")
    mean = F.avg_pool2d(pad, window, stride=1)
    mean_sq = F.avg_pool2d(pad * pad, window, stride=1)
    # max(σ_min, sqrt(var)) == sqrt(max(σ_min², var)): finite gradients also where var == 0
    std = (mean_sq - mean * mean).clamp_min(sigma_min**2).sqrt()
    out = (x - mean) / std
    return out if image.ndim == 4 else out.squeeze(1)


def mlwt_loss(pred: torch.Tensor, target: torch.Tensor, *, windows: tuple[int, ...] = MLWT_WINDOWS,
              sigma_min: float = SIGMA_MIN) -> torch.Tensor:
    """Multi-local whitening transform loss, shape (B,).

    Implements eq. (8) of Lobato et al. (2023): the mean L1 distance between the local whitening transforms
    (eq. 7, :func:`local_whitening`) of prediction and target, averaged over windows S = 2, 4, 8, 16.
    Invariant to ``(pred, target) -> (a·pred + b, a·target + b)``, ``a > 0``, where local stds exceed σ_min.

    Parameters
    ----------
    pred, target : Tensor, shape (B, C, H, W) or (B, H, W)
        Generated image y_g and ground truth y [intensity]; H, W > max(windows) // 2.
    windows : tuple of int
        Window sizes S [pixels].
    sigma_min : float
        Lower bound of the local standard deviation [intensity].

    Returns
    -------
    Tensor, shape (B,)
    """
    _check_pair(pred, target)
    if len(windows) == 0:
        raise ValueError("windows must contain at least one window size [pixels], got ()")
    total = 0.0
    for s in windows:
        diff = local_whitening(target, s, sigma_min=sigma_min) - local_whitening(pred, s, sigma_min=sigma_min)
        total = total + _per_sample_mean(diff.abs())
    return total / len(windows)


def fourier_loss(pred: torch.Tensor, target: torch.Tensor, *, gamma: float = 0.125,
                 eps: float = 1e-4) -> torch.Tensor:
    """Fourier-space power loss ``mean |F(y - y_g)|^γ``, shape (B,).

    Implements eq. (9) of Lobato et al. (2023) with γ = 0.125. ``F`` is the orthonormal 2-D DFT
    (``norm="ortho"``, so the loss does not grow with the image size), the mean runs over all frequencies.
    Because ``|z|^γ`` has an infinite slope at 0 we evaluate ``(|z|² + ε²)^(γ/2) - ε^γ``, which is 0 for
    ``pred == target``, has finite gradients, and equals ``|z|^γ`` to within ``ε^γ`` (``eps=0`` gives the
    exact published form; use it only where ``pred != target``).

    Parameters
    ----------
    pred, target : Tensor, shape (B, C, H, W) or (B, H, W)
        Generated image y_g and ground truth y [intensity].
    gamma : float
        Power γ in (0, 1].
    eps : float
        Smoothing ε ≥ 0 [intensity].

    Returns
    -------
    Tensor, shape (B,)
    """
    _check_pair(pred, target)
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1], got {gamma}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0 [intensity], got {eps}")
    spec = torch.fft.fft2(target - pred, norm="ortho")
    power = spec.real**2 + spec.imag**2
    if eps == 0.0:
        val = power ** (gamma / 2)
    else:
        val = (power + eps**2) ** (gamma / 2) - eps**gamma
    return _per_sample_mean(val)


def mean_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean-intensity constraint ``|E{y} - E{y_g}|`` per sample, shape (B,); eq. (10) of Lobato et al."""
    _check_pair(pred, target)
    return (_per_sample_mean(target) - _per_sample_mean(pred)).abs()


def std_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Contrast constraint ``|Std{y} - Std{y_g}|`` per sample, shape (B,); eq. (11) of Lobato et al."""
    _check_pair(pred, target)
    return (_per_sample_std(target) - _per_sample_std(pred)).abs()


def mae_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain mean absolute error per sample, shape (B,) (Katsuno et al. 2021, eq. 1)."""
    _check_pair(pred, target)
    return _per_sample_mean((target - pred).abs())


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain mean squared error per sample, shape (B,) (Mohan et al. 2022 train with MSE)."""
    _check_pair(pred, target)
    return _per_sample_mean((target - pred) ** 2)


def wmse_loss(pred: torch.Tensor, target: torch.Tensor, *, weight: float = 1000.0) -> torch.Tensor:
    """Weighted MSE of Gambini et al. (2023), eq. (2), shape (B,).

    Pixels where the target equals its per-sample minimum ("black" pixels) get weight 1, all others
    ``weight`` (1000 in the paper); the weighted squared errors are averaged over the pixels.

    Parameters
    ----------
    pred, target : Tensor, shape (B, C, H, W) or (B, H, W)
        Prediction and ground truth [intensity].
    weight : float
        Weight of non-black pixels relative to black ones.

    Returns
    -------
    Tensor, shape (B,)
    """
    _check_pair(pred, target)
    if not weight > 0:
        raise ValueError(f"weight must be positive, got {weight}")
    flat = target.reshape(target.shape[0], -1)
    is_min = flat == flat.min(dim=1, keepdim=True).values
    w = torch.where(is_min, torch.ones_like(flat), torch.full_like(flat, float(weight)))
    return (w * (flat - pred.reshape(flat.shape)) ** 2).mean(dim=1)


def _check_logits(d_real: torch.Tensor, d_fake: torch.Tensor) -> None:
    """Check that critic logits have equal shape with a batch dimension."""
    for name, t in (("d_real", d_real), ("d_fake", d_fake)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of critic logits, got {type(t).__name__}")
        if t.ndim < 1:
            raise ValueError(f"{name} must have a batch dimension, got shape {tuple(t.shape)}")
    if d_real.shape != d_fake.shape:
        raise ValueError(f"d_real and d_fake must have the same shape, got {tuple(d_real.shape)} and "
                         f"{tuple(d_fake.shape)}")


def _relativistic(d_real: torch.Tensor, d_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of D_Rap(y, y_g) and D_Rap(y_g, y), eqs. (2)–(3): C(y) - E{C(y_g)}, C(y_g) - E{C(y)}."""
    return d_real - d_fake.mean(), d_fake - d_real.mean()


def adversarial_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average adversarial (generator) loss, shape (B,).

    Implements eq. (12) of Lobato et al. (2023):
    ``L_Adv = -E{log(1 - D_Rap(y, y_g))} - E{log D_Rap(y_g, y)}`` with ``D_Rap`` of eqs. (2)–(3). The
    expectations inside ``D_Rap`` run over the whole batch and all patches; the outer expectation is
    returned per sample (mean over that sample's patches). Computed with ``softplus`` for stability.

    Parameters
    ----------
    d_real, d_fake : Tensor, shape (B, 1, h, w)
        Critic logits C(y) of real and C(y_g) of generated images (gradients must flow through ``d_fake``).

    Returns
    -------
    Tensor, shape (B,)
    """
    _check_logits(d_real, d_fake)
    rel_real, rel_fake = _relativistic(d_real, d_fake)
    # -log(1 - σ(z)) = softplus(z);  -log σ(z) = softplus(-z)
    return _per_sample_mean(F.softplus(rel_real) + F.softplus(-rel_fake))


def discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Relativistic average discriminator loss, shape (B,).

    Implements eq. (15) of Lobato et al. (2023):
    ``L_D = -E{log D_Rap(y, y_g)} - E{log(1 - D_Rap(y_g, y))}``; the mirror image of
    :func:`adversarial_loss` (``discriminator_loss(r, f) == adversarial_loss(f, r)``). Pass ``d_fake``
    computed from a detached generator output.

    Parameters
    ----------
    d_real, d_fake : Tensor, shape (B, 1, h, w)
        Critic logits C(y) and C(y_g).

    Returns
    -------
    Tensor, shape (B,)
    """
    _check_logits(d_real, d_fake)
    rel_real, rel_fake = _relativistic(d_real, d_fake)
    return _per_sample_mean(F.softplus(-rel_real) + F.softplus(rel_fake))


@dataclass(frozen=True)
class LossWeights:
    """Weights λ of the generator loss, eqs. (13)–(14) of Lobato et al. (2023).

    The paper does not publish them (it grid-searched them). Our defaults are an untuned starting point,
    chosen so that each term is of order 0.1–1 for a half-trained network on images normalised to unit
    standard deviation, with the adversarial term 1 % of the L1 term as in pix2pix (λ_L1 = 100 · λ_GAN).
    See docs/restoration.md.
    """

    l1: float = 1.0
    l2: float = 0.5
    mlwt: float = 0.25
    fourier: float = 0.05
    mean: float = 0.5
    std: float = 0.5
    adversarial: float = 0.01

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not (isinstance(value, int | float) and value >= 0):
                raise ValueError(f"LossWeights.{name} must be a non-negative number, got {value!r}")


_PIXEL_TERMS = {
    "l1": l1_loss,
    "l2": l2_loss,
    "mlwt": mlwt_loss,
    "fourier": fourier_loss,
    "mean": mean_loss,
    "std": std_loss,
}


def generator_loss(pred: torch.Tensor, target: torch.Tensor, d_real: torch.Tensor | None = None,
                   d_fake: torch.Tensor | None = None, *, weights: LossWeights | None = None) -> torch.Tensor:
    """Total generator loss ``L_G = L_pixel-wise + λ_Adv L_Adv``, shape (B,).

    Implements eqs. (13)–(14) of Lobato et al. (2023) with the weights of :class:`LossWeights`. The
    adversarial term is added only when both critic logit maps are given (omit them for pixel-loss
    pre-training); terms with weight 0 are not evaluated.

    Parameters
    ----------
    pred, target : Tensor, shape (B, C, H, W) or (B, H, W)
        Generated image y_g = G(x) and ground truth y [intensity], H, W ≥ 9 (MLWT windows up to 16).
    d_real, d_fake : Tensor, shape (B, 1, h, w), optional
        Critic logits C(y) and C(y_g) of :class:`~stemquant.restore.PatchDiscriminator`.
    weights : LossWeights, optional
        Weights λ; default ``LossWeights()``.

    Returns
    -------
    Tensor, shape (B,)

    Examples
    --------
    >>> y = torch.rand(2, 1, 32, 32)
    >>> generator_loss(y + 0.1, y).shape
    torch.Size([2])
    """
    _check_pair(pred, target)
    w = LossWeights() if weights is None else weights
    if not isinstance(w, LossWeights):
        raise TypeError(f"weights must be a LossWeights, got {type(w).__name__}")
    if (d_real is None) != (d_fake is None):
        raise ValueError("give both d_real and d_fake (critic logits) for the adversarial term, or neither")
    total = torch.zeros(pred.shape[0], dtype=pred.dtype, device=pred.device)
    for name, fn in _PIXEL_TERMS.items():
        lam = getattr(w, name)
        if lam:
            total = total + lam * fn(pred, target)
    if d_real is not None and w.adversarial:
        if d_real.shape[0] != pred.shape[0]:
            raise ValueError(f"critic logits have batch size {d_real.shape[0]}, images {pred.shape[0]}")
        total = total + w.adversarial * adversarial_loss(d_real, d_fake)
    return total
