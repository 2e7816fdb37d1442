"""The watcher: every torch optimiser's steps in this process, monitored.

torch calls global optimiser hooks (torch.optim.optimizer.
register_optimizer_step_pre_hook, pytorch#88446) before every step of every
optimiser, so a script is monitored without a line of it changed:

- the first time an optimiser steps, its parameters are named by the module
  that owns them (the outermost nn.Module holding them, found once among the
  live objects) and it gets its own GradientMonitor (a GAN has two);
- gradients are read before the script's clip (gradguard.torch.clip_tap: the
  statistics are taken when torch's clip is about to run) and the norm after
  it is measured at the step; a loop that does not clip is read at the step;
- a step a GradScaler skips (overflowed fp16 gradients, routine) is counted,
  not recorded: GradScaler.step is wrapped to see that the optimiser did not step;
- each new finding is one line on stderr at once; every recorded step is one
  line of history.jsonl (written as it happens, so a crash loses nothing);
  close() writes report.md, findings.jsonl and the gradient-flow PNGs.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import warnings

import torch as _torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..monitor import GradientMonitor
from ..torch import clip_tap
from ..torch._tensors import trainable
from ..torch.origin import NonfiniteOrigin
from ..torch.recorder import StepRecorder, read_stats
from . import outputs

__all__ = ["Watcher"]


def owner_names(parameters):
    """A name per parameter: its name in the outermost live nn.Module holding it
    (a module no other module has as a child), the module covering most of the
    parameters first; the module's class name leads when they span several;
    parameters no module holds are named by position ("param.<i>")."""
    wanted = {id(p): index for index, p in enumerate(parameters)}
    roots = []
    for module in _roots():
        held = [(name, p) for name, p in module.named_parameters(remove_duplicate=False) if id(p) in wanted]
        if held:
            roots.append((module, held))
    roots.sort(key=lambda entry: -len(entry[1]))
    names = [None] * len(parameters)
    owners = set()
    for module, held in roots:
        for name, parameter in held:
            index = wanted[id(parameter)]
            if names[index] is None:
                names[index] = (type(module).__name__, name)
                owners.add(type(module).__name__)
    several = len(owners) > 1
    labels = []
    for index, entry in enumerate(names):
        if entry is None:
            labels.append(f"param.{index}")
        else:
            labels.append(f"{entry[0]}/{entry[1]}" if several else entry[1])
    return _unique(labels)


def module_name(module):
    """A live module's name in the outermost module holding it (found among the
    live objects: asked only for a step that went non-finite)."""
    for root in _roots():
        for name, candidate in root.named_modules():
            if candidate is module:
                return name or type(root).__name__
    return type(module).__name__


def _roots():
    """The live modules no other live module has as a child."""
    with warnings.catch_warnings():  # isinstance on some live objects (deprecated torch aliases) warns
        warnings.simplefilter("ignore")
        modules = [obj for obj in gc.get_objects() if isinstance(obj, _torch.nn.Module)]
    children = {id(child) for module in modules for child in module.children()}
    return [module for module in modules if id(module) not in children]


def _unique(labels):
    seen, result = {}, []
    for label in labels:
        count = seen.get(label, 0)
        seen[label] = count + 1
        result.append(label if count == 0 else f"{label}#{count}")
    return result


class Watcher:
    """Monitors every torch optimiser's steps in this process until close().

    out: the folder for report.md, history.jsonl, findings.jsonl and the
    PNGs (created; per rank, out/rank<r>, when WORLD_SIZE > 1).
    max_norm: also clip every optimiser's gradients at this global L2 norm
    (torch's rule), after the script's own clip. skip_nonfinite: skip a step
    whose gradients hold inf/NaN (every .grad set to None before the step).
    every: record one step in N (the steps in between cost nothing).
    find_origin: hook every module's forward (torch's global module hook) so
    that a non-finite step names where its inf/NaN was born (gradguard.torch.origin).
    monitor_settings: GradientMonitor's keyword settings. stream: where the
    findings go as they happen (stderr).
    """

    def __init__(
        self,
        out="gradguard-watch",
        *,
        max_norm=None,
        skip_nonfinite=False,
        every=1,
        find_origin=True,
        monitor_settings=None,
        stream=None,
    ):
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.out = os.path.join(str(out), f"rank{self.rank}") if self.world_size > 1 else str(out)
        self.max_norm = max_norm
        self.skip_nonfinite = skip_nonfinite
        self.every = every
        self.monitor_settings = dict(monitor_settings or {})
        GradientMonitor(**self.monitor_settings)  # refused settings are refused before anything is hooked
        self.stream = sys.stderr if stream is None else stream
        self.recorders = []  # (label, optimizer class name, recorder) in the order the optimisers first stepped
        self._by_optimizer = {}  # id(optimizer) -> recorder
        self._steps_begun = {}  # id(optimizer) -> pre-hook calls, to see a GradScaler skip
        self._handle = None
        self._history = None
        self._scaler_step = None
        self._unclaimed = None  # statistics taken at a clip no recorder claimed (before a first step)
        self.closed = False
        self._closing = threading.Lock()
        os.makedirs(self.out, exist_ok=True)
        self._history = open(os.path.join(self.out, "history.jsonl"), "w")
        self._handle = register_optimizer_step_pre_hook(self._before_step)
        # Where a NaN was born: every module's forward output checked on its device (see torch.origin).
        self.origin = NonfiniteOrigin(name_of=module_name) if find_origin else None
        clip_tap.add_listener(self._before_clip)
        self._wrap_scaler()

    # -- hooks ------------------------------------------------------------------------------
    def _recorder_for(self, optimizer):
        recorder = self._by_optimizer.get(id(optimizer))
        if recorder is None:
            parameters = [p for group in optimizer.param_groups for p in group["params"]]  # frozen ones too
            names = owner_names(parameters)
            named_trainable = trainable(zip(names, parameters))
            monitor = GradientMonitor(names=[name for name, _ in named_trainable], **self.monitor_settings)
            recorder = StepRecorder(
                list(zip(names, parameters)),
                monitor,
                max_norm=self.max_norm,
                skip_nonfinite=self.skip_nonfinite,
                every=self.every,
                origin=self.origin,
            )
            if self.origin is not None:
                self.origin.add_parameters(named_trainable)
            if self._unclaimed is not None:
                recorder.adopt(self._unclaimed)
                self._unclaimed = None
            label = f"optimizer {len(self.recorders)} ({type(optimizer).__name__})"
            self.recorders.append((label, type(optimizer).__name__, recorder))
            self._by_optimizer[id(optimizer)] = recorder
            optimizer._gradguard_recorder = recorder  # keeps the id from being reused while the optimiser lives
        return recorder

    def _before_step(self, optimizer, args, kwargs):
        self._steps_begun[id(optimizer)] = self._steps_begun.get(id(optimizer), 0) + 1
        recorder = self._recorder_for(optimizer)
        closure = kwargs.get("closure", args[0] if args else None)
        if not callable(closure):
            self._stream_step(recorder, recorder.at_step())
            return None
        # step(closure) (Lightning, LBFGS): the gradients are made inside the step, by
        # the closure, so the step is recorded when the closure first returns.
        recorded = []

        def watched_closure():
            loss = closure()
            if not recorded:
                recorded.append(True)
                self._stream_step(recorder, recorder.at_step())
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": watched_closure}
        return (watched_closure, *args[1:]), kwargs

    def _before_clip(self, parameters):
        claimed = False
        for _, _, recorder in self.recorders:
            if recorder.touches(parameters):
                recorder.before_clip()
                claimed = True
        if not claimed:
            # Before an optimiser's first step its recorder does not exist yet: keep these
            # parameters' statistics for it (named by identity until it names them).
            present = [(str(id(p)), p.grad) for p in parameters if p.grad is not None]
            self._unclaimed = read_stats(present) if present else None

    def _wrap_scaler(self):
        """GradScaler.step(optimizer) that does not call optimizer.step() skipped the step."""
        from torch.amp.grad_scaler import GradScaler

        original = GradScaler.step
        watcher = self

        def step(scaler, optimizer, *args, **kwargs):
            begun = watcher._steps_begun.get(id(optimizer), 0)
            result = original(scaler, optimizer, *args, **kwargs)
            if watcher._steps_begun.get(id(optimizer), 0) == begun:
                watcher._recorder_for(optimizer).skipped()
            return result

        GradScaler.step = step
        self._scaler_step = (GradScaler, original)

    # -- outputs ----------------------------------------------------------------------------
    def _prefix(self, recorder):
        parts = ["gradguard"]
        if self.world_size > 1:
            parts.append(f"[rank {self.rank}]")
        if len(self.recorders) > 1:
            parts.append(f"[{next(label for label, _, r in self.recorders if r is recorder)}]")
        return " ".join(parts)

    def _stream_step(self, recorder, findings):
        for finding in findings:
            print(
                f"{self._prefix(recorder)}: step {finding.step}: {finding.kind}: {finding.message}",
                file=self.stream,
                flush=True,
            )
        if findings or recorder.monitor.recorded is not None:
            label = next(label for label, _, r in self.recorders if r is recorder)
            latest = recorder.monitor.latest()
            if latest and latest.get("gradguard/step") == recorder.step - 1:
                entry = {"optimizer": label, **latest}
                self._history.write(json.dumps(entry, default=float) + "\n")
                self._history.flush()

    def close(self, exit_code=None, command=None) -> str:
        """Unhook, write report.md, findings.jsonl and the PNGs; returns the report's path."""
        with self._closing:  # the main thread and the SIGTERM helper (run.py) may both close
            if self.closed:
                return os.path.join(self.out, "report.md")
            self.closed = True
        if self._handle is not None:
            self._handle.remove()
        clip_tap.remove_listener(self._before_clip)
        if self.origin is not None:
            self.origin.remove()
        if self._scaler_step is not None:
            owner, original = self._scaler_step
            owner.step = original
        self._history.close()
        path = outputs.write(self, exit_code, command)
        if not self.recorders:
            print(
                f"gradguard watch: the script never stepped a torch.optim optimizer, so nothing was monitored "
                f"(gradguard watches torch.optim.Optimizer.step); see {path}",
                file=self.stream,
                flush=True,
            )
        else:
            print(f"gradguard watch: report in {path}", file=self.stream, flush=True)
        return path
