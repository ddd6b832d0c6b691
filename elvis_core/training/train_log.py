"""What a training run records: ``log.csv`` (and TensorBoard events when the ``tensorboard`` package is importable),
and the grounding validation metrics (CNR / mIoU / pointing on an MS-CXR CSV) that go into it.

``_Logger`` writes the rows (columns :data:`LOG_COLUMNS`; only rank 0 writes); :func:`grounding_validation` runs the
evaluator on the configured annotations. Re-exported by :mod:`elvis_core.training.trainer`, whose ``train`` looks
``grounding_validation`` up there (benchmarks replace it to add a checkpoint per validation).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict

LOG_COLUMNS = ["step", "epoch", "lr", "loss", "global", "local", "region_sentence", "intra", "pairs_per_s",
               "seconds", "val_loss", "val_cnr", "val_miou", "val_pointing", "elvis", "anatomy", "negation",
               "mirror"]


class _Logger:
    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.path = out / "log.csv"
        self.tb = None
        if not enabled:
            return
        new = not self.path.exists()
        self.fh = open(self.path, "a", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.fh, fieldnames=LOG_COLUMNS)
        if new:
            self.w.writeheader()
        try:  # TensorBoard only when its package is installed
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except Exception:  # noqa: BLE001 - any import problem means "no TensorBoard"
            self.tb = None

    def row(self, **kw) -> None:
        if not self.enabled:
            return
        self.w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in kw.items() if k in LOG_COLUMNS})
        self.fh.flush()
        if self.tb is not None:
            step = kw.get("step", 0)
            for k, v in kw.items():
                if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            if self.tb is not None:
                self.tb.close()


def grounding_validation(model, cfg: Dict[str, Any]) -> Dict[str, float]:
    """CNR / mIoU / pointing on the configured MS-CXR CSV (first ``max_phrases`` phrases of the split)."""
    from elvis_core.grounding.engine import GroundingEngine
    from elvis_core.grounding.evaluate import evaluate
    from elvis_core.io.annotations import AnnotationSet, read_ms_cxr_csv

    v = cfg["validation"]
    aset = read_ms_cxr_csv(v["annotations"]).filter_split(v["split"] or None)
    phrases = aset.phrases[: v["max_phrases"]] if v["max_phrases"] > 0 else aset.phrases
    aset = AnnotationSet(phrases, aset.errors, aset.source_path, aset.version)
    was_training = model.training
    engine = GroundingEngine(model, device=str(next(model.parameters()).device))
    try:
        res = evaluate(engine, aset, v["images_root"] or cfg["data"]["root"])
    finally:
        model.train(was_training)
    o = res.overall
    return {"val_cnr": float(o.get("cnr", float("nan"))), "val_miou": float(o.get("miou", float("nan"))),
            "val_pointing": float(o.get("pointing", float("nan"))), "val_phrases": float(res.n_evaluated)}
