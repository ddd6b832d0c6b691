"""The ELVIS dual encoder: a transformers ResNet for images, a BERT-like transformer for text, projection heads into
a joint L2-normalised space.

Shapes (B batch, S input side, gh x gw patch grid = S / ``output_stride``, C image channels of the last stage,
L tokens, H text hidden size, D joint dimension):

- :meth:`ElvisModel.encode_image` ``pixel_values`` float [B, 1, S, S] (the grey model input of
  :class:`~elvis_core.model.transforms.ModelInputTransform`; one channel, ResNet built with ``num_channels=1``)
  → :class:`ImageEmbeddings` (``patch_emb`` [B, gh, gw, D], ``global_emb`` [B, D], ``patch_feats`` [B, gh, gw, C]).
- :meth:`ElvisModel.encode_text` ``input_ids``/``attention_mask`` long [B, L] → :class:`TextEmbeddings`
  (``token_emb`` [B, L, D], ``global_emb`` [B, D], ``token_feats`` [B, L, H], ``attention_mask`` [B, L]).

``patch_emb``, ``token_emb`` and both ``global_emb`` are L2-normalised over D, so a phrase grounding map is simply
``einsum("bhwd,bd->bhw", patch_emb, text.global_emb)`` — cosine similarities in [-1, 1].

The config decides the heads (:mod:`elvis_core.model.heads`), the image global embedding (projection of the pooled
grid, or the mean of the projected patches as BioViL), an optional BioViL-T fusion between the ResNet and the
projection (``C`` is then ``2 * fusion.dim``) and the input transform, so imported models (``elvis import``) are
ordinary ``ElvisModel`` objects.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from elvis_core.errors import ConfigError
from elvis_core.model.config import validate_model_config
from elvis_core.model.heads import ProjectionHead, TemporalFusion
from elvis_core.model.transforms import transform_from_config

log = logging.getLogger(__name__)


@dataclass
class ImageEmbeddings:
    patch_emb: torch.Tensor  # [B, gh, gw, D] projected local features, L2-normalised over D
    global_emb: torch.Tensor  # [B, D] projected pooled feature, L2-normalised
    patch_feats: torch.Tensor  # [B, gh, gw, C] last-stage features before projection


@dataclass
class TextEmbeddings:
    token_emb: torch.Tensor  # [B, L, D] projected token features, L2-normalised (padding positions arbitrary)
    global_emb: torch.Tensor  # [B, D] projected [CLS] / mean-pooled feature, L2-normalised
    token_feats: torch.Tensor  # [B, L, H] before projection
    attention_mask: torch.Tensor  # [B, L] long, 1 = real token


def _drop_pooler(model) -> None:
    """The BERT pooler (dense + tanh on [CLS]) is not used (we project [CLS] ourselves); dropping it keeps every
    parameter in use (DDP) and the checkpoint small."""
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def _build_text_model(text_cfg: Dict[str, Any], init_from_path: bool):
    """Returns (transformers model, hf_config dict). ``init_from_path``: load the weights from ``text.path``."""
    from transformers import AutoConfig, AutoModel, BertConfig, BertModel

    if text_cfg["source"] == "pretrained" and init_from_path:
        path = text_cfg["path"]
        try:
            model = AutoModel.from_pretrained(path, local_files_only=True)
        except Exception as err:  # transformers raises OSError/ValueError for bad dirs
            raise ConfigError(f"cannot load a text model from this folder: {err}".splitlines()[0], path) from err
        _drop_pooler(model)
        hf = json.loads(model.config.to_json_string(use_diff=False))
        return model, hf
    if text_cfg["source"] == "pretrained":
        hf = dict(text_cfg["hf_config"])
        model_type = hf.pop("model_type", "bert")
        for k in ("transformers_version", "architectures", "_name_or_path", "auto_map", "dtype", "torch_dtype"):
            hf.pop(k, None)
        try:
            conf = AutoConfig.for_model(model_type, **hf)
            model = AutoModel.from_config(conf)
            _drop_pooler(model)
        except Exception as err:
            raise ConfigError(f"cannot build text model of type {model_type!r}: {err}".splitlines()[0]) from err
        return model, json.loads(model.config.to_json_string(use_diff=False))
    conf = BertConfig(**text_cfg["hf_config"])
    model = BertModel(conf, add_pooling_layer=False)
    return model, dict(text_cfg["hf_config"])


def dilate_last_stages(resnet, n: int) -> int:
    """Replace the downsampling of the last ``n`` downsampling stages of a transformers ``ResNetModel`` by dilation
    (DeepLab's output stride): the stride-2 convolution (3 x 3 or 1 x 1) and the shortcut get stride 1, and every
    3 x 3 convolution after it gets twice the dilation (padding to match). The weights are unchanged and the output at
    every other position equals the original network's output (tested), so a checkpoint trained either way loads
    and the grid is simply ``2 ** n`` times finer. Returns the factor by which the output stride shrank."""
    stages = list(resnet.encoder.stages)
    down = [st for st in stages if any(m.stride == (2, 2) for m in st.modules() if isinstance(m, nn.Conv2d))]
    if n < 0 or n > len(down):
        raise ValueError(f"model.image.dilate_stages must be 0..{len(down)} for this ResNet, got {n}")
    if n == 0:
        return 1
    def set_rate(conv, r):
        k = conv.kernel_size[0]
        if k > 1:
            conv.dilation, conv.padding = (r, r), (r * (k // 2),) * 2

    rate = 1
    for st in stages[stages.index(down[-n]):]:
        downsamples = st in down[-n:]
        new_rate = rate * 2 if downsamples else rate
        for li, layer in enumerate(st.layers):
            after = not (downsamples and li == 0)  # convs after the stride-2 one run at the new rate
            for m in layer.layer.modules():
                if not isinstance(m, nn.Conv2d):
                    continue
                if m.stride == (2, 2):
                    m.stride = (1, 1)
                    set_rate(m, rate)
                    after = True
                else:
                    set_rate(m, new_rate if after else rate)
            sc = getattr(layer, "shortcut", None)
            for m in (sc.modules() if isinstance(sc, nn.Module) else ()):
                if isinstance(m, nn.Conv2d):
                    m.stride = (1, 1)
        rate = new_rate
    return 2 ** n


class ElvisModel(nn.Module):
    """Image and text encoders + projection heads. Build with :func:`build_model`, load with
    :func:`elvis_core.model.checkpoint.load_checkpoint`."""

    def __init__(self, config: Dict[str, Any], tokenizer, text_model, hf_text_config: Dict[str, Any]):
        super().__init__()
        from transformers import ResNetConfig, ResNetModel

        self._config = config
        self.tokenizer = tokenizer
        self.transform = transform_from_config(config["preprocessing"])
        rcfg = ResNetConfig(**config["image"]["resnet"])
        self.image_encoder = ResNetModel(rcfg)
        self.text_encoder = text_model
        c_img = rcfg.hidden_sizes[-1]
        fusion = config["image"].get("fusion", {"kind": "none"})
        if fusion["kind"] == "biovil-t":
            self.image_fusion = TemporalFusion(c_img, dim=fusion["dim"], heads=fusion["heads"],
                                               blocks=fusion["blocks"], grid=fusion["grid"])
            c_img = self.image_fusion.out_channels
        else:
            self.image_fusion = None
        self._image_global = config["image"].get("global", "project_pooled")
        h_txt = int(getattr(text_model.config, "hidden_size"))
        p = config["projection"]
        ih = p.get("image_hidden") or p["hidden"]
        th = p.get("text_hidden") or p["hidden"]
        ik = p.get("image_head", "linear-gelu-linear")
        tk = p.get("text_head", "linear-gelu-linear")
        self.image_proj = ProjectionHead(c_img, ih, p["dim"], ik)
        self.text_proj = ProjectionHead(h_txt, th, p["dim"], tk)
        if not p["shared_local_global"]:
            if self._image_global == "project_pooled":
                self.image_global_proj = ProjectionHead(c_img, ih, p["dim"], ik)
            self.text_global_proj = ProjectionHead(h_txt, th, p["dim"], tk)
        self.image_channels = c_img
        self.text_hidden = h_txt
        self.embed_dim = p["dim"]
        n_stages = len(rcfg.hidden_sizes)
        #: input pixels per grid cell side (stem /4, then /2 per stage after the first, and the first if asked)
        self.output_stride = 4 * 2 ** (n_stages - 1) * (2 if rcfg.downsample_in_first_stage else 1)
        n_dilated = int(config["image"].get("dilate_stages", 0) or 0)
        if n_dilated:
            self.output_stride //= dilate_last_stages(self.image_encoder, n_dilated)
        max_pos = int(getattr(text_model.config, "max_position_embeddings", 512) or 512)
        self.max_text_length = int(min(config["text"]["max_length"], max_pos))
        self._hf_text_config = hf_text_config

    # -- config ---------------------------------------------------------------------------------------------------
    @property
    def config(self) -> Dict[str, Any]:
        """The whole model config (JSON-serialisable), incl. ``"preprocessing"``; rebuilds this architecture."""
        cfg = copy.deepcopy(self._config)
        cfg["text"]["hf_config"] = copy.deepcopy(self._hf_text_config)
        if cfg["text"]["source"] == "config":
            cfg["text"]["hf_config"]["vocab_size"] = int(self.text_encoder.config.vocab_size)
        cfg["preprocessing"] = self.transform.to_config()
        return cfg

    def grid_shape(self, size: Optional[int] = None) -> tuple:
        """(gh, gw) of the patch grid for a square input of side ``size`` (default: the transform's)."""
        s = int(size or self.transform.size)
        g = -(-s // self.output_stride)
        return g, g

    @property
    def grid_anchor(self) -> str:
        """Where a patch-grid cell is drawn on the image: ``model.image.grid_anchor`` (see
        :func:`~elvis_core.model.transforms.grid_cell_offset`)."""
        return str(self._config["image"].get("grid_anchor", "receptive_field"))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- text -----------------------------------------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> Dict[str, Any]:
        """Tokenize (lower-case WordPiece or the text model's own tokenizer), pad to the longest, truncate to
        :attr:`max_text_length`. Returns ``input_ids``/``attention_mask`` LongTensor [B, L] and ``truncated``:
        list[bool] (True where the text did not fit)."""
        if isinstance(texts, str):
            texts = [texts]
        strip = self._config["text"].get("strip_trailing", "")
        texts = [t.rstrip(strip) if strip else t for t in texts]
        # one token more than fits tells whether a text was truncated (and avoids the over-length warning)
        full = self.tokenizer(texts, add_special_tokens=True, truncation=True,
                              max_length=self.max_text_length + 1)["input_ids"]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_length,
                             return_tensors="pt", return_token_type_ids=False)
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long(),
                "truncated": [len(ids) > self.max_text_length for ids in full]}

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextEmbeddings:
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        feats = out.last_hidden_state  # [B, L, H]
        if self._config["text"]["pooling"] == "mean":
            m = attention_mask.unsqueeze(-1).to(feats.dtype)
            pooled = (feats * m).sum(1) / m.sum(1).clamp_min(1.0)
        else:
            pooled = feats[:, 0]
        token_emb = F.normalize(self.text_proj(feats), dim=-1)
        head = self.text_proj if self._config["projection"]["shared_local_global"] else self.text_global_proj
        global_emb = F.normalize(head(pooled), dim=-1)
        return TextEmbeddings(token_emb=token_emb, global_emb=global_emb, token_feats=feats,
                              attention_mask=attention_mask.long())

    def encode_phrases(self, texts: List[str]) -> TextEmbeddings:
        """Tokenize and encode on the model's device (convenience for inference)."""
        t = self.tokenize(texts)
        dev = self.device
        return self.encode_text(t["input_ids"].to(dev), t["attention_mask"].to(dev))

    # -- image ----------------------------------------------------------------------------------------------------
    def _backbone(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 1:
            raise ValueError(f"pixel_values must be [B, 1, S, S], got {tuple(pixel_values.shape)}")
        return self.image_encoder(pixel_values=pixel_values).last_hidden_state.permute(0, 2, 3, 1)  # [B, gh, gw, C]

    def encode_image(self, pixel_values: torch.Tensor,
                     previous_pixel_values: Optional[torch.Tensor] = None) -> ImageEmbeddings:
        """``previous_pixel_values`` (same shape): a prior study's image, used by a BioViL-T fusion only."""
        feats = self._backbone(pixel_values)
        if self.image_fusion is not None:
            prev = None if previous_pixel_values is None else self._backbone(previous_pixel_values)
            feats = self.image_fusion(feats, prev)
        elif previous_pixel_values is not None:
            raise ValueError("this model has no multi-image (BioViL-T) fusion; it takes no previous image")
        projected = self.image_proj(feats)
        patch_emb = F.normalize(projected, dim=-1)
        if self._image_global == "mean_projected_patches":
            global_emb = F.normalize(projected.mean(dim=(1, 2)), dim=-1)
        else:
            pooled = feats.mean(dim=(1, 2))
            head = self.image_proj if self._config["projection"]["shared_local_global"] else self.image_global_proj
            global_emb = F.normalize(head(pooled), dim=-1)
        return ImageEmbeddings(patch_emb=patch_emb, global_emb=global_emb, patch_feats=feats)

    def forward(self, pixel_values, input_ids, attention_mask):
        return self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask)


def build_model(config: Mapping[str, Any], tokenizer=None, texts: Optional[List[str]] = None,
                init_text_from_path: bool = True) -> ElvisModel:
    """Build a freshly initialised model from a model config (see :mod:`elvis_core.model.config`).

    ``tokenizer``: a ``PreTrainedTokenizerFast`` to use; otherwise, for ``text.source == "config"``, a WordPiece
    vocabulary is trained on ``texts`` (e.g. the training reports) + the built-in seed corpus (deterministic), and for
    ``"pretrained"`` the tokenizer of ``text.path`` is loaded. ``init_text_from_path=False`` builds a pretrained-kind
    text model from ``text.hf_config`` without reading ``text.path`` and ignores ``image.pretrained`` (used when
    loading checkpoints); with True, ``image.pretrained`` (a transformers ResNet folder) sets the ResNet's
    architecture and weights (RGB stem folded to one channel).
    """
    cfg = validate_model_config(config)
    text_cfg = cfg["text"]
    if tokenizer is None:
        if text_cfg["source"] == "config":
            from elvis_core.model.vocab import train_wordpiece

            tk = text_cfg["tokenizer"]
            tokenizer = train_wordpiece(texts or [], vocab_size=tk["vocab_size"], lowercase=tk["lowercase"],
                                        min_frequency=tk["min_frequency"], model_max_length=text_cfg["max_length"])
        else:
            if not text_cfg["path"]:
                raise ConfigError("model.text.path is needed to load the tokenizer of a pretrained text model")
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(text_cfg["path"], local_files_only=True)
            except Exception as err:
                raise ConfigError(f"cannot load a tokenizer from this folder: {err}".splitlines()[0],
                                  text_cfg["path"]) from err
    if text_cfg["source"] == "config":
        text_cfg["hf_config"] = dict(text_cfg["hf_config"])
        text_cfg["hf_config"]["vocab_size"] = len(tokenizer)
        text_cfg["hf_config"].setdefault("pad_token_id", int(tokenizer.pad_token_id or 0))
        mp = int(text_cfg["hf_config"].get("max_position_embeddings", 512))
        text_cfg["max_length"] = min(text_cfg["max_length"], mp)
    image_state = None
    if cfg["image"].get("pretrained") and init_text_from_path:
        from elvis_core.model.importers import load_pretrained_resnet

        rcfg, image_state = load_pretrained_resnet(cfg["image"]["pretrained"])
        cfg["image"]["resnet"] = rcfg
    text_model, hf = _build_text_model(text_cfg, init_from_path=init_text_from_path)
    if text_cfg["source"] == "pretrained":
        text_cfg["hf_config"] = hf
    model = ElvisModel(cfg, tokenizer, text_model, hf)
    if image_state is not None:
        from elvis_core.model.checkpoint import check_state_dict

        expected = model.image_encoder.state_dict()
        check_state_dict(expected, {k: tuple(v.shape) for k, v in image_state.items()}, cfg["image"]["pretrained"])
        model.image_encoder.load_state_dict({k: v.to(expected[k].dtype) for k, v in image_state.items()})
        log.info("image encoder initialised from %s", cfg["image"]["pretrained"])
    return model
