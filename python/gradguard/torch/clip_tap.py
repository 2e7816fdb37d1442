"""Seeing a training loop's gradients just before its clip.

Training loops clip before they step (`clip_grad_norm_` and then
`optimizer.step()`: the Hugging Face Trainer, Lightning, Accelerate, most
hand-written loops), so a hook on the optimiser's step sees clipped
gradients, and a norm read there says nothing about the explosion the clip
hid. While a listener is registered here, torch's clipping functions are
wrapped so that every listener is called with the parameters about to be
clipped, before anything is written:

- `torch.nn.utils.clip_grad_norm_`, `clip_grad_value_` and
  `clip_grads_with_norm_` (Accelerate's dtensor-aware clip calls the last;
  the wrappers are set on `torch.nn.utils` and on its `clip_grad` module, so
  a name looked up at call time or imported after the tap is set finds them);
- FSDP's `FullyShardedDataParallel.clip_grad_norm_` (its own parameters);
- gradguard.torch's own drop-ins, which call before_clip.

A clip that calls another (clip_grad_norm_ calls clip_grads_with_norm_)
notifies once, at the outer call. Clips written by hand (`g.mul_(c)`) or
through other libraries' functions are not seen. The wrappers are removed
when the last listener is.
"""

from __future__ import annotations

import functools
import threading

import torch as _torch

__all__ = ["add_listener", "remove_listener", "before_clip"]

_listeners = []
_installed = []  # (owner, attribute, original) for every wrapper set
_state = threading.local()  # depth of clip calls in this thread: only the outer one notifies


def _targets():
    from torch.nn.utils import clip_grad

    utils = _torch.nn.utils
    targets = []
    for owner in (utils, clip_grad):
        for attribute in ("clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "_clip_grads_with_norm_"):
            if hasattr(owner, attribute):
                targets.append((owner, attribute, False))
    if _torch.distributed.is_available():
        try:
            from torch.distributed.fsdp import FullyShardedDataParallel
        except ImportError:  # pragma: no cover - a torch without FSDP
            FullyShardedDataParallel = None
        if FullyShardedDataParallel is not None:
            targets.append((FullyShardedDataParallel, "clip_grad_norm_", True))
    return targets


def _notify(parameters):
    for listener in list(_listeners):
        listener(parameters)


def _outermost(parameters, call):
    """Tells the listeners about `parameters` when this is the outermost clip
    (a clip calling another, as FSDP's calls torch's, is told once), then runs call()."""
    depth = getattr(_state, "depth", 0)
    if depth == 0:
        _notify(parameters)
    _state.depth = depth + 1
    try:
        return call()
    finally:
        _state.depth = depth


def _wrapped_function(original):
    @functools.wraps(original)
    def clip(parameters, *args, **kwargs):
        # A generator is read here once: the clip gets the same parameters as a list.
        parameters = [parameters] if isinstance(parameters, _torch.Tensor) else list(parameters)
        return _outermost(parameters, lambda: original(parameters, *args, **kwargs))

    clip.__gradguard_original__ = original
    return clip


def _wrapped_method(original):
    @functools.wraps(original)
    def clip(self, *args, **kwargs):
        return _outermost(list(self.parameters()), lambda: original(self, *args, **kwargs))

    clip.__gradguard_original__ = original
    return clip


def before_clip(parameters) -> list:
    """For gradguard's own clips (gradguard.torch's drop-ins): the parameters as a
    list (a generator read once), the listeners told first, as torch's clips tell them."""
    parameters = [parameters] if isinstance(parameters, _torch.Tensor) else list(parameters)
    if _listeners and getattr(_state, "depth", 0) == 0:
        _notify(parameters)
    return parameters


def add_listener(listener) -> None:
    """Call listener(parameters) before each of torch's clips (the list of
    parameters about to be clipped); the wrappers are set with the first listener."""
    if not _installed:
        for owner, attribute, is_method in _targets():
            original = getattr(owner, attribute)
            wrapper = _wrapped_method(original) if is_method else _wrapped_function(original)
            setattr(owner, attribute, wrapper)
            _installed.append((owner, attribute, original))
    _listeners.append(listener)


def remove_listener(listener) -> None:
    """Stop calling listener; torch's own functions are back once no listener is left."""
    if listener in _listeners:
        _listeners.remove(listener)
    if not _listeners:
        while _installed:
            owner, attribute, original = _installed.pop()
            setattr(owner, attribute, original)
