"""HostSyncs: counts, on the CPU, the calls that make the host wait for a GPU.

On CUDA these block the Python thread until the device has caught up (a device-to-host read,
or an op whose output size depends on data). `torch.cuda.set_sync_debug_mode` reports them
on a GPU only; on the CPU we count them instead:
- through a TorchDispatchMode: `_local_scalar_dense` (what .item(), float(t), int(t), bool(t),
  `if tensor:` and f-string formatting of a tensor dispatch to), nonzero, masked_select,
  unique, repeat_interleave with tensor repeats, and indexing with a boolean mask;
- by patching the methods that read a CPU tensor without dispatching: .tolist(), .cpu(),
  .numpy().
Each call is recorded with the resforce source line that made it, or None where torch code
made it (e.g. AdamW reading its step counter, a CPU tensor even on a GPU: no sync there).
"""

from __future__ import annotations

import os
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import resforce

_aten = torch.ops.aten
_SYNC_OPS = {_aten._local_scalar_dense, _aten.nonzero, _aten.masked_select, _aten.unique_consecutive,
             _aten._unique2, _aten.unique_dim}
_PATCHED = ("tolist", "cpu", "numpy")
_SRC = os.path.dirname(resforce.__file__) + os.sep
# reads of data that lives on the host by construction, never on a device: the chunk-attention
# planner reads its (Qc, Kc) chunk mask, which plan_tiles refuses unless it is a real CPU tensor
_HOST_ONLY = {("model/attention/tile_plan.py", "plan_tiles")}
_DISPATCH_WRAPPERS = (os.path.join("torch", "_compile.py"), os.path.join("torch", "_dynamo", "eval_frame.py"))


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class HostSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str | None]] = []
        self._saved = {}

    def _record(self, what: str) -> None:
        stack = traceback.extract_stack()
        while stack[-1].filename == __file__ or stack[-1].filename.endswith(_DISPATCH_WRAPPERS):
            stack.pop()  # this file, and torch's frames between an op and __torch_dispatch__
        caller = stack[-1]
        ours = caller.filename.startswith(_SRC)  # called from resforce, not from inside torch
        if ours and (os.path.relpath(caller.filename, _SRC), caller.name) in _HOST_ONLY:
            return
        where = f"{os.path.relpath(caller.filename, _SRC)}:{caller.lineno}" if ours else None
        self.calls.append((what, where))

    @property
    def ours(self) -> list[tuple[str, str]]:
        """The syncs made from resforce code."""
        return [c for c in self.calls if c[1] is not None]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if (packet in _SYNC_OPS or func is _aten.repeat_interleave.Tensor
                or (packet in (_aten.index, _aten.index_put, _aten.index_put_) and _bool_index(args))):
            self._record(str(packet))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in _PATCHED:
            original = getattr(torch.Tensor, name)
            self._saved[name] = torch.Tensor.__dict__.get(name)  # None: inherited from TensorBase

            def counted(t, *a, _name=name, _original=original, **k):
                self._record(f"Tensor.{_name}")
                return _original(t, *a, **k)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, own in self._saved.items():
            if own is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own)
        return super().__exit__(*exc)
