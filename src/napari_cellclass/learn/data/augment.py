"""Random augmentation of whole batches with tensor ops on their device, then normalisation."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from .normalise import Normalisation


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable depthwise Gaussian blur of ``(B, C, H, W)`` with reflected borders."""
    k = _gaussian_kernel(sigma, x.device)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    k = k[len(k) // 2 - r: len(k) // 2 + r + 1]
    k = k / k.sum()
    y = F.pad(x, (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


_DIHEDRAL: dict[tuple[int, str], torch.Tensor] = {}


def dihedral_table(size: int, device: torch.device) -> torch.Tensor:
    """``(16, size * size)`` source pixel of each output pixel for code ``fh + 2 fv + 4 k``:
    horizontal flip, then vertical flip, then ``k`` 90 degree rotations."""
    key = (size, str(device))
    if key not in _DIHEDRAL:
        base = torch.arange(size * size).view(size, size)
        rows = []
        for k in range(4):
            for fv in (0, 1):
                for fh in (0, 1):
                    t = base.flip(-1) if fh else base
                    t = t.flip(-2) if fv else t
                    rows.append(torch.rot90(t, k, dims=(-2, -1)).flatten())
        _DIHEDRAL[key] = torch.stack(rows).to(device)
    return _DIHEDRAL[key]


def dihedral(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Flip/rotate each square image of ``x`` ``(B, C, S, S)`` by its ``code`` (exact, one gather)."""
    b, ch, s, _ = x.shape
    index = dihedral_table(s, x.device)[code]
    out = x.reshape(b, ch, s * s).gather(2, index[:, None, :].expand(b, ch, s * s))
    return out.view(b, ch, s, s)


class BatchAugment:
    """Random augmentation of whole batches on their device, then per-channel normalisation.

    Geometric transforms (flips, 90 degree rotations, affine, random resized crop) are composed
    into one matrix per image and applied with a single ``grid_sample``; when only flips and
    90 degree rotations are on, exact index operations are used instead.
    """

    def __init__(self, cfg: TrainConfig, norm: Normalisation, device: torch.device) -> None:
        self.cfg = cfg
        self.mean, self.std = norm.tensors(device)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` per channel."""
        return (x - self.mean) / self.std

    @property
    def _needs_grid(self) -> bool:
        c = self.cfg
        return bool(c.aug_affine_degrees or c.aug_affine_translate or c.aug_affine_scale or c.aug_crop_scale < 1)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Augment and normalise ``x`` (float32 ``(B, C, S, S)``) with random numbers from ``gen``.

        Few passes over the batch: the flips and 90 degree rotations are one ``gather`` through
        a table of the dihedral pixel permutations, and contrast, brightness and normalisation
        are one fused multiply-add per image and channel (each pass over the batch costs a
        thread-pool round trip on the CPU).
        """
        c = self.cfg
        b = x.shape[0]
        dev = x.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen, device=gen.device).to(dev)

        x = self._geometric(x, rand) if self._needs_grid else self._dihedral(x, rand)
        if c.aug_gamma:
            g = 1 + (rand(b) * 2 - 1) * c.aug_gamma
            x = x.clamp_min(0).pow(g.view(-1, 1, 1, 1))
        scale, shift = self._contrast_brightness(x, rand)  # pending per-image, per-channel x * scale + shift
        blur = bool(c.aug_blur_prob and c.aug_blur_sigma > 0)
        if blur or c.aug_noise_std:
            if c.aug_contrast or c.aug_brightness:
                x = torch.addcmul(shift[..., None, None], x, scale[..., None, None])
            return self.normalise(self._blur_and_noise(x, rand, gen, blur))
        mean, std = self.mean.view(1, -1), self.std.view(1, -1)
        return torch.addcmul(((shift - mean) / std)[..., None, None], x, (scale / std)[..., None, None])

    def _dihedral(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Random flips and 90 degree rotations as one exact gather."""
        c = self.cfg
        b = x.shape[0]
        code = torch.zeros(b, dtype=torch.long, device=x.device)
        if c.aug_flips:
            code += (rand(b) < 0.5).long()
            code += 2 * (rand(b) < 0.5).long()
        square = x.shape[-1] == x.shape[-2]
        if c.aug_rot90 and square:
            code += 4 * (rand(b) * 4).long().clamp_max(3)
        if c.aug_flips or (c.aug_rot90 and square):
            x = dihedral(x, code)
        return x

    def _contrast_brightness(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` per image (and channel) of the random contrast and brightness."""
        c = self.cfg
        b = x.shape[0]
        scale = torch.ones((b, 1), device=x.device)
        shift = torch.zeros((b, 1), device=x.device)
        if c.aug_contrast:
            f = (1 + (rand(b) * 2 - 1) * c.aug_contrast).view(-1, 1)
            m = x.mean(dim=(-2, -1))
            scale, shift = f, m * (1 - f)
        if c.aug_brightness:
            shift = shift + ((rand(b) * 2 - 1) * c.aug_brightness).view(-1, 1)
        return scale, shift

    def _blur_and_noise(self, x: torch.Tensor, rand: Callable[..., torch.Tensor], gen: torch.Generator,
                        blur: bool) -> torch.Tensor:
        """Blur a random share of the images, then add Gaussian noise of a random level."""
        c = self.cfg
        b = x.shape[0]
        if blur:
            sel = (rand(b) < c.aug_blur_prob).nonzero().flatten()
            if len(sel):
                sigma = (float(0.1 + rand(1).item() * (c.aug_blur_sigma - 0.1)) if c.aug_blur_sigma > 0.1
                         else c.aug_blur_sigma)
                x = x.clone()
                x[sel] = gaussian_blur(x[sel], sigma)
        if c.aug_noise_std:
            amp = rand(b).view(-1, 1, 1, 1) * c.aug_noise_std
            noise = torch.randn(x.shape, generator=gen, device=gen.device).to(x.device)
            x = x + noise * amp
        return x

    def _geometric(self, x: torch.Tensor, rand: Callable[..., torch.Tensor]) -> torch.Tensor:
        c = self.cfg
        b = x.shape[0]
        dev = x.device
        eye = torch.eye(3, device=dev).repeat(b, 1, 1)
        m = eye.clone()
        if c.aug_flips:
            m[:, 0, 0] = torch.where(rand(b) < 0.5, -1.0, 1.0)
            m[:, 1, 1] = torch.where(rand(b) < 0.5, -1.0, 1.0)
        if c.aug_rot90:
            k = (rand(b) * 4).floor().clamp_max(3)
            ang = k * (math.pi / 2)
            r = eye.clone()
            cos, sin = torch.cos(ang).round(), torch.sin(ang).round()
            r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1] = cos, -sin, sin, cos
            m = r @ m
        if c.aug_affine_degrees or c.aug_affine_translate or c.aug_affine_scale:
            ang = (rand(b) * 2 - 1) * math.radians(c.aug_affine_degrees)
            s = 1 + (rand(b) * 2 - 1) * c.aug_affine_scale
            a = eye.clone()
            a[:, 0, 0], a[:, 0, 1] = torch.cos(ang) / s, -torch.sin(ang) / s
            a[:, 1, 0], a[:, 1, 1] = torch.sin(ang) / s, torch.cos(ang) / s
            a[:, 0, 2] = (rand(b) * 2 - 1) * 2 * c.aug_affine_translate
            a[:, 1, 2] = (rand(b) * 2 - 1) * 2 * c.aug_affine_translate
            m = a @ m
        if c.aug_crop_scale < 1:
            area = c.aug_crop_scale + rand(b) * (1 - c.aug_crop_scale)
            logr = (rand(b) * 2 - 1) * math.log(4 / 3)
            w = torch.sqrt(area * torch.exp(logr)).clamp(max=1.0)
            h = torch.sqrt(area / torch.exp(logr)).clamp(max=1.0)
            crop = eye.clone()
            crop[:, 0, 0], crop[:, 1, 1] = w, h
            crop[:, 0, 2] = (rand(b) * 2 - 1) * (1 - w)
            crop[:, 1, 2] = (rand(b) * 2 - 1) * (1 - h)
            m = crop @ m
        grid = F.affine_grid(m[:, :2, :], list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
