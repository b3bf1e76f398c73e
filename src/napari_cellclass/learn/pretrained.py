"""Load pretrained weights from a local file into a backbone, and prove that they loaded.

timm's own file loading only *warns* when keys do not fit and then trains from random weights.
Here every backbone tensor must receive a value, matched by name or, when a foreign
implementation names them differently, by order and shape; otherwise nothing is loaded and a
:class:`WeightsError` says why. Files are read with ``torch.load(weights_only=True)`` or
safetensors: nothing is ever unpickled.
"""
from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import WeightsError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_CONTAINERS = ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema", "ema",
               "net", "network", "params", "weights")
_STRIP_PREFIXES = ("module.", "_orig_mod.")
_NAME_PREFIXES = ("", "backbone.", "model.", "encoder.", "net.", "features.")
_CLASSIFIER_RE = re.compile(
    r"(^|\.)(_?fc|classifier|last_linear|logits|head)(\.\d+)?\.(weight|bias)$|(^|\.)head\.fc\."
)


@dataclass(frozen=True)
class LoadReport:
    """What a weights load did.

    Attributes
    ----------
    loaded : tensors copied into the model (backbone, plus the classifier when kept).
    missing : model tensors left at their random start (always 0 after a successful file load).
    unexpected : tensors in the file that were not used (its classifier, VGG's fc layers, ...).
    mapped_by : ``'name'``, ``'order'`` (order and shape), ``'timm'`` / ``'torchvision'``
        (their ImageNet download) or ``'none'`` (random init).
    source : the file path, ``'imagenet:<weights tag>'`` or ``'random'``.
    adapted : input-conv weights adapted from 3 (RGB) to the model's channel count.
    missing_keys, unexpected_keys : the names behind the counts (first 20).
    """

    loaded: int
    missing: int
    unexpected: int
    mapped_by: str
    source: str
    adapted: tuple[str, ...] = ()
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for config.json and ``--json`` output)."""
        return asdict(self)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the tensors of a weights file, unwrapping common checkpoint containers.

    Parameters
    ----------
    path : ``.pth``/``.pt``/``.bin``/``.ckpt`` (read with ``weights_only=True``) or
        ``.safetensors``.

    Returns
    -------
    dict
        Tensor name -> tensor, in file order, with ``module.`` prefixes removed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise WeightsError(f"{path.name}: not a weights file (expected one of "
                           f"{', '.join(WEIGHT_SUFFIXES)})")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path.name}: holds pickled Python objects, which are not loaded for safety; save "
            "only the tensors (torch.save(model.state_dict(), ...) or .safetensors)") from exc
    except Exception as exc:  # noqa: BLE001 - corrupt/truncated files raise many types
        raise WeightsError(f"{path.name}: cannot be read as weights "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from exc
    return _unwrap(obj, path.name)


def _unwrap(obj: Any, label: str) -> dict[str, torch.Tensor]:
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{label}: holds a {type(obj).__name__}, not a dict of tensors")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _STRIP_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix):], True
        out[name] = value
    if not out:
        raise WeightsError(f"{label}: contains no tensors")
    return out


def _significant(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def adapt_stem(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt an RGB input-conv kernel to ``in_chans`` channels (timm's ``adapt_input_conv``).

    1 channel: sum of the RGB kernels. N > 3: the RGB kernels repeated and scaled by 3/N,
    so a grey image repeated on every channel gives the same activations as in RGB.
    """
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_chans, weight.detach().clone().float()).to(weight.dtype)


def _fit(src: torch.Tensor, tgt: torch.Tensor, is_stem: bool) -> torch.Tensor | None:
    """The source tensor made to fit the target, or None."""
    if src.shape == tgt.shape:
        return src
    if (is_stem and src.ndim == 4 and tgt.ndim == 4 and src.shape[1] == 3
            and src.shape[0] == tgt.shape[0] and src.shape[2:] == tgt.shape[2:]):
        return adapt_stem(src, tgt.shape[1])
    return None


def match_state_dict(
    source: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    *,
    stem_key: str | None = None,
    classifier_prefix: str | None = None,
    discard_prefixes: Iterable[str] = (),
    label: str = "weights",
    model_name: str = "the backbone",
) -> tuple[dict[str, torch.Tensor], str, list[str], list[tuple[str, torch.Tensor]]]:
    """Map the source tensors onto every target tensor, by name or else by order and shape.

    Returns
    -------
    mapped : target key -> tensor to load (stem adapted where needed; all target keys).
    mapped_by : ``'name'`` or ``'order'``.
    adapted : target keys whose input-conv kernel was adapted to another channel count.
    leftovers : unused source (key, tensor) pairs, classifier first-class among them.

    Raises
    ------
    WeightsError
        When not every (significant) target tensor can be filled.
    """
    discard = tuple(discard_prefixes)
    tgt_keys = [k for k in target if _significant(k)]
    is_classifier = _classifier_test(classifier_prefix)
    by_name = _match_by_name(source, target, tgt_keys, stem_key)  # 1. by name
    if len(by_name) == len(tgt_keys):
        pairs, mapped_by = list(by_name.items()), "name"
    else:  # 2. by order and shape (foreign implementations of the same architecture)
        by_order = _match_by_order(source, target, tgt_keys, stem_key, is_classifier)
        if isinstance(by_order, str):
            raise WeightsError(f"{label} does not fit {model_name}: only {len(by_name)} of "
                               f"{len(tgt_keys)} tensors match by name, and by order {by_order}; "
                               "nothing was loaded")
        pairs, mapped_by = by_order, "order"
    mapped, adapted, used = _take(source, target, pairs, stem_key)
    leftovers = [(k, v) for k, v in source.items() if k not in used and _significant(k)]
    extra = [k for k, _v in leftovers if not is_classifier(k) and not k.startswith(discard)]
    if extra:
        raise WeightsError(f"{label} holds {len(extra)} tensors more than {model_name} (e.g. "
                           f"'{extra[0]}'): it is a different or bigger model; nothing was loaded")
    return mapped, mapped_by, adapted, leftovers


def _classifier_test(classifier_prefix: str | None) -> Callable[[str], bool]:
    """Whether a source key belongs to a classifier (the model's own prefix or a usual name)."""
    def is_classifier(key: str) -> bool:
        if classifier_prefix and (key == classifier_prefix or key.startswith(classifier_prefix + ".")):
            return True
        return bool(_CLASSIFIER_RE.search(key))

    return is_classifier


def _match_by_name(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], tgt_keys: list[str],
                   stem_key: str | None) -> dict[str, str]:
    """Target key -> source key, trying the prefixes checkpoints commonly wrap backbones in (the best one)."""
    best: dict[str, str] = {}
    for prefix in _NAME_PREFIXES:
        found = {k: prefix + k for k in tgt_keys if prefix + k in source
                 and _fit(source[prefix + k], target[k], k == stem_key) is not None}
        if len(found) > len(best):
            best = found
    return best


def _match_by_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], tgt_keys: list[str],
                    stem_key: str | None, is_classifier: Callable[[str], bool]) -> list[tuple[str, str]] | str:
    """``(target key, source key)`` pairs in order, or why the order and shapes do not fit."""
    body = [(k, v) for k, v in source.items() if _significant(k) and not is_classifier(k)]
    if len(body) > len(tgt_keys) and len(body) - len(tgt_keys) <= 2:
        body = body[:len(tgt_keys)]  # a trailing classifier under an unknown name
    bad = _order_mismatch(body, tgt_keys, target, stem_key)
    if bad is not None:
        return bad
    return [(t, s) for t, (s, _v) in zip(tgt_keys, body, strict=True)]


def _take(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], pairs: list[tuple[str, str]],
          stem_key: str | None) -> tuple[dict[str, torch.Tensor], list[str], set[str]]:
    """The tensors to load for ``pairs`` (stem adapted where needed), the adapted keys, the source keys used."""
    mapped: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    used: set[str] = set()
    for tkey, skey in pairs:
        value = _fit(source[skey], target[tkey], tkey == stem_key)
        assert value is not None
        if value.shape != source[skey].shape:
            adapted.append(tkey)
        mapped[tkey] = value
        used.add(skey)
        _carry_bn_counter(source, target, skey, tkey, mapped, used)
    return mapped, adapted, used


def _order_mismatch(body: list[tuple[str, torch.Tensor]], tgt_keys: list[str],
                    target: Mapping[str, torch.Tensor], stem_key: str | None) -> str | None:
    if len(body) != len(tgt_keys):
        return f"the file has {len(body)} backbone tensors where the model has {len(tgt_keys)}"
    for i, (tkey, (skey, value)) in enumerate(zip(tgt_keys, body, strict=True)):
        if _fit(value, target[tkey], tkey == stem_key) is None:
            return (f"tensor #{i} differs ('{skey}' {list(value.shape)} vs '{tkey}' "
                    f"{list(target[tkey].shape)})")
    return None


def _carry_bn_counter(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                      skey: str, tkey: str, mapped: dict[str, torch.Tensor], used: set[str]) -> None:
    """Copy BatchNorm's ``num_batches_tracked`` along with its running mean."""
    if not (skey.endswith(".running_mean") and tkey.endswith(".running_mean")):
        return
    s_cnt = skey[: -len("running_mean")] + "num_batches_tracked"
    t_cnt = tkey[: -len("running_mean")] + "num_batches_tracked"
    if s_cnt in source and t_cnt in target:
        mapped[t_cnt] = source[s_cnt]
        used.add(s_cnt)


def load_into(module: torch.nn.Module, mapped: Mapping[str, torch.Tensor]) -> int:
    """Copy mapped tensors into ``module`` (strict about every significant key); return count."""
    own = module.state_dict()
    missing = [k for k in own if _significant(k) and k not in mapped]
    if missing:  # match_state_dict guarantees this; kept as a last line of defence
        raise WeightsError(f"{len(missing)} backbone tensors got no weights (e.g. '{missing[0]}')")
    with torch.no_grad():
        for key, value in mapped.items():
            own[key].copy_(value.to(own[key].dtype))
    return len(mapped)
