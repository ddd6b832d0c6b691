"""The resume state of a training run (``OUT/last``): safetensors + JSON, never pickle.

:func:`save_trainer_state` writes a model checkpoint, the objectives' parameters, the optimizer's tensors
(``trainer_state.safetensors``), its scalars, the scheduler and the progress (``trainer_state.json``) into
``last.tmp`` and swaps it in for ``last``; :func:`load_trainer_state` restores them and returns the progress.

Re-exported by :mod:`elvis_core.training.trainer`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict

import torch

from elvis_core.errors import CheckpointError
from elvis_core.model.checkpoint import save_checkpoint
from elvis_core.training.train_module import TrainModule

STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"


def save_trainer_state(out: Path, module: TrainModule, optimizer, scheduler, meta: Dict[str, Any],
                       provenance: Dict[str, Any]) -> None:
    """Write ``out/last``: model checkpoint + objective params + optimizer/scheduler state + progress (atomic swap)."""
    from safetensors.torch import save_file

    tmp = out / "last.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    save_checkpoint(module.model, tmp, provenance=provenance)
    tensors: Dict[str, torch.Tensor] = {}
    for k, v in module.objective.state_dict().items():
        tensors[f"objective.{k}"] = v.detach().cpu().contiguous().clone()
    osd = optimizer.state_dict()
    state_json: Dict[str, Dict[str, Any]] = {}
    for idx, st in osd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{idx}.{name}"] = v.detach().cpu().contiguous().clone()
            else:
                state_json.setdefault(str(idx), {})[name] = v
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / STATE_TENSORS))
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    doc = {"meta": meta, "optimizer_param_groups": osd["param_groups"], "optimizer_state_scalars": state_json,
           "scheduler": sched}
    (tmp / STATE_JSON).write_text(json.dumps(doc, indent=1), encoding="utf-8")
    last = out / "last"
    old = out / "last.old"
    if last.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(last, old)
    os.replace(tmp, last)
    if old.exists():
        shutil.rmtree(old)


def load_trainer_state(last: Path, module: TrainModule, optimizer, scheduler) -> Dict[str, Any]:
    """Restore objective params, optimizer and scheduler from ``last``; returns the saved ``meta``."""
    from safetensors.torch import load_file

    try:
        doc = json.loads((last / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(last / STATE_TENSORS))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read the resume state ({err}); delete this folder to start over", last) \
            from err
    obj = {k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")}
    try:
        module.objective.load_state_dict(obj, strict=True)
    except RuntimeError as err:
        raise CheckpointError("resume state does not match the configured objectives (changed weights?): "
                              + str(err).splitlines()[0], last) from err
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optimizer."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, d in doc.get("optimizer_state_scalars", {}).items():
        state.setdefault(int(idx), {}).update(d)
    groups = doc["optimizer_param_groups"]
    if len(groups) != len(optimizer.param_groups) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, optimizer.param_groups)):
        raise CheckpointError("resume state's optimizer does not match this model/config", last)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    sd = scheduler.state_dict()
    sd.update(doc["scheduler"])
    scheduler.load_state_dict(sd)
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return doc["meta"]
