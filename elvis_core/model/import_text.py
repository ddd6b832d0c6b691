"""CXR-BERT text folders for ``elvis import``: config (read as data, depth-checked), vocabulary, tokenizer and the
``bert.*`` / projection-head tensors. Its Python code is never run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from elvis_core.errors import ModelImportError

# ---------------------------------------------------------------------------------------------------- text
_BERT_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
              "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type")


def read_text_folder(folder: os.PathLike | str) -> Dict[str, Any]:
    """Read a CXR-BERT-style folder without running its code: BERT config, projection size, tokenizer, tensors."""
    d = Path(folder)
    if not d.is_dir():
        raise ModelImportError("text model folder not found (expected the Hugging Face folder with config.json, "
                               "vocab.txt and the weights)", d)
    cpath = d / "config.json"
    if not os.path.lexists(cpath):
        raise ModelImportError("text model folder has no config.json", d)
    from elvis_core.io.paths import require_regular_file
    from elvis_core.io.safe_json import read_json_file

    conf = read_json_file(cpath, ModelImportError, max_bytes=4 << 20, what="config.json")  # depth checked first
    if not isinstance(conf, dict) or "hidden_size" not in conf:
        raise ModelImportError("config.json does not describe a BERT-like model (no hidden_size)", cpath)
    mt = conf.get("model_type", "bert")
    if mt not in ("cxr-bert", "bert"):
        raise ModelImportError(f"model_type {mt!r} is not supported (expected 'cxr-bert' or 'bert')", cpath)
    vocab = d / "vocab.txt"
    if not os.path.lexists(vocab):
        raise ModelImportError("text model folder has no vocab.txt (the tokenizer vocabulary is required)", d)
    if require_regular_file(vocab, ModelImportError, "vocabulary file").st_size > 64 << 20:
        raise ModelImportError("vocab.txt is larger than 64 MiB: not a BERT vocabulary", vocab)
    try:
        n_vocab = sum(1 for _ in vocab.open(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelImportError("vocab.txt is not UTF-8 text", vocab) from None
    tok_conf: Dict[str, Any] = {}
    tpath = d / "tokenizer_config.json"
    if os.path.lexists(tpath):
        tok_conf = read_json_file(tpath, ModelImportError, max_bytes=4 << 20, what="tokenizer_config.json")
        if not isinstance(tok_conf, dict):
            raise ModelImportError("tokenizer_config.json is not an object", tpath)
    weights = None
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).is_file():
            weights = d / name
            break
    if weights is None:
        raise ModelImportError("text model folder has no model.safetensors or pytorch_model.bin", d)
    bert = {k: conf[k] for k in _BERT_KEYS if k in conf}
    _check_types(bert, cpath)
    bert["model_type"] = "bert"
    bert.setdefault("vocab_size", n_vocab)
    if n_vocab > int(bert["vocab_size"]):  # fewer is fine (a padded embedding matrix); more would index past it
        raise ModelImportError(f"vocab.txt has {n_vocab} entries but config.json says vocab_size "
                               f"{bert['vocab_size']}: not this model's vocabulary", d)
    proj = conf.get("projection_size", 128)
    if isinstance(proj, bool) or not isinstance(proj, int) or not 1 <= proj <= 65536:
        raise ModelImportError(f"projection_size must be an integer 1..65536, got {str(proj)[:30]}", cpath)
    return {"folder": d, "bert": bert, "projection_size": proj,
            "vocab": vocab, "lowercase": bool(tok_conf.get("do_lower_case", True)), "weights": weights,
            "model_type": mt, "n_vocab": n_vocab}


_INT_KEYS = {"vocab_size": (1, 1_000_000), "hidden_size": (1, 65536), "num_hidden_layers": (1, 256),
             "num_attention_heads": (1, 1024), "intermediate_size": (1, 262144),
             "max_position_embeddings": (1, 8192), "type_vocab_size": (1, 1024), "pad_token_id": (0, 1_000_000)}
_FLOAT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps")


def _check_types(bert: Dict[str, Any], where) -> None:
    """Every size an integer in range, every rate a finite number, the activation and embedding type text: a
    config value of the wrong type is one line naming the key (it was a ValueError / TypeError traceback)."""
    import math

    for k, (lo, hi) in _INT_KEYS.items():
        v = bert.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
            raise ModelImportError(f"{k} must be an integer {lo}..{hi}, got {str(v)[:30]}", where)
    for k in _FLOAT_KEYS:
        v = bert.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                              or not 0 <= v <= 1e3):
            raise ModelImportError(f"{k} must be a finite number, got {str(v)[:30]}", where)
    for k in ("hidden_act", "position_embedding_type"):
        v = bert.get(k)
        if v is not None and not isinstance(v, str):
            raise ModelImportError(f"{k} must be text, got {str(v)[:30]}", where)


def convert_cxr_bert(state: Dict[str, torch.Tensor], where) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """``bert.*`` → ``text_encoder.*``, ``cls_projection_head.*`` → ``text_proj.*``; the MLM head is dropped."""
    out: Dict[str, torch.Tensor] = {}
    dropped = []
    head = {"cls_projection_head.dense_to_hidden.": "text_proj.fc1.", "cls_projection_head.LayerNorm.": "text_proj.ln.",
            "cls_projection_head.dense_to_output.": "text_proj.fc2."}
    has_bert_prefix = any(k.startswith("bert.") for k in state)
    for k, v in state.items():
        hk = next((h for h in head if k.startswith(h)), None)
        if hk:
            out[head[hk] + k[len(hk):]] = v
        elif k.endswith("embeddings.position_ids") or ".pooler." in k or k.startswith("pooler."):
            dropped.append(k)
        elif has_bert_prefix and k.startswith("bert."):
            out["text_encoder." + k[len("bert."):]] = v
        elif not has_bert_prefix and (k.startswith("embeddings.") or k.startswith("encoder.")):
            out["text_encoder." + k] = v
        else:
            dropped.append(k)
    if not any(k.startswith("text_proj.") for k in out):
        raise ModelImportError("no CXR-BERT projection head (cls_projection_head.*) in the text weights; a plain "
                               "BERT has no joint-space projection and cannot be paired with BioViL", where)
    return out, dropped


def make_tokenizer(info: Dict[str, Any], max_length: int):
    """BERT's WordPiece tokenizer from ``vocab.txt`` (line order = ids) and ``do_lower_case``, built with
    ``tokenizers`` (the same normaliser, pre-tokeniser and [CLS] ... [SEP] template as ``BertTokenizer``), so it does
    not depend on how a transformers version reads vocab files."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: Dict[str, int] = {}
    with open(info["vocab"], encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            vocab[line.rstrip("\n")] = i
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t not in vocab]
    if missing:
        raise ModelImportError(f"vocab.txt lacks the special token(s) {', '.join(missing)}: not a BERT vocabulary",
                               info["vocab"])
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=bool(info["lowercase"]))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=int(max_length))


