"""WordPiece vocabularies trained with `tokenizers` (the offline default text tokenizer).

:func:`train_wordpiece` trains a BERT-style (lower-cased, [CLS] ... [SEP]) WordPiece tokenizer on report texts plus a
small built-in corpus of chest X-ray phrases (:data:`SEED_CORPUS`), so that a model built before any training data is
seen (``build_model(preset("demo"))``) still has a sensible, deterministic vocabulary. Every printable ASCII character
is in the initial alphabet, so no word ever becomes ``[UNK]`` as a whole. The vocabulary is saved with a checkpoint.
"""

from __future__ import annotations

import string
from typing import Iterable, List

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

#: a small corpus of typical chest X-ray report language (written for this project, no patient data)
SEED_CORPUS: List[str] = [
    "The lungs are clear. There is no pleural effusion or pneumothorax.",
    "Heart size is normal. The mediastinal and hilar contours are normal.",
    "Mild cardiomegaly is unchanged. The aorta is tortuous and calcified.",
    "There is a right lower lobe consolidation concerning for pneumonia.",
    "Left lower lobe opacity may reflect atelectasis or pneumonia.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Moderate right pleural effusion has increased since the prior study.",
    "Large left apical pneumothorax. No tension.",
    "Small right apical pneumothorax is unchanged.",
    "Bibasilar atelectasis. No focal consolidation.",
    "Pulmonary vascular congestion and mild interstitial edema.",
    "Moderate pulmonary edema with bilateral perihilar opacities.",
    "A nodular opacity in the right upper lobe measures 1 cm.",
    "Patchy opacities in the left mid lung and lingula.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Nasogastric tube courses below the diaphragm into the stomach.",
    "Right internal jugular central venous catheter tip in the cavoatrial junction.",
    "Left-sided pacemaker with leads in the right atrium and right ventricle.",
    "Sternotomy wires and mediastinal clips are intact.",
    "Degenerative changes of the thoracic spine.",
    "No acute osseous abnormality. No displaced rib fracture.",
    "Elevation of the right hemidiaphragm is chronic.",
    "Blunting of the left costophrenic angle suggests a small effusion.",
    "Retrocardiac opacity likely atelectasis.",
    "Hyperinflated lungs consistent with chronic obstructive pulmonary disease.",
    "Increased interstitial markings at the bases, possibly fibrosis.",
    "Multifocal airspace opacities are worrisome for multifocal pneumonia.",
    "Subcutaneous emphysema along the right chest wall.",
    "FINDINGS: PA and lateral views of the chest. IMPRESSION: No acute cardiopulmonary process.",
    "Compared to the prior radiograph, the opacity has improved.",
    "Dense mass in the left upper zone, increased in size.",
    "Round lesion projecting over the right lower zone.",
    "Cardiac silhouette is enlarged. Mild vascular engorgement.",
    "Left basilar opacity, right basilar opacity, bilateral effusions.",
]


def train_wordpiece(texts: Iterable[str], vocab_size: int = 2000, lowercase: bool = True, min_frequency: int = 1,
                    model_max_length: int = 512):
    """Train a WordPiece tokenizer on ``texts`` + :data:`SEED_CORPUS`; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=None,
                                                lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    alphabet = sorted(set(string.ascii_lowercase + string.digits + string.punctuation
                          + ("" if lowercase else string.ascii_uppercase)))
    trainer = trainers.WordPieceTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=alphabet,
                                        show_progress=False, continuing_subword_prefix="##")
    corpus = list(SEED_CORPUS) + [t for t in texts if t]
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=int(model_max_length))


# -- the words a model knows ----------------------------------------------------------------------------------------
# a checkpoint records them in known_words.json beside config.json (elvis_core/model/checkpoint.py)
_WORD = None


def words_of(text: str) -> List[str]:
    """The lower-case alphabetic words of ``text`` in order (digits and punctuation split words and are dropped:
    "moderate-sized" -> moderate, sized; "1 cm" -> cm)."""
    global _WORD
    if _WORD is None:
        import re

        _WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
    return [w.lower() for w in _WORD.findall(text or "")]


def known_words_from_texts(texts: Iterable[str]) -> List[str]:
    """Sorted set of the words in ``texts`` (the report words a text encoder was trained on)."""
    out = set()
    for t in texts:
        out.update(words_of(t))
    return sorted(out)


def merge_known_words(prior, texts: Iterable[str], source: str) -> dict:
    """``{"source", "words"}``: the words of ``texts`` plus those of ``prior`` (a known-words dict or None: a model
    trained further keeps what it knew)."""
    words = set(known_words_from_texts(texts))
    src = source
    if isinstance(prior, dict) and prior.get("words"):
        words.update(prior["words"])
        src = f"{source} + {prior.get('source') or 'the initial model'}"
    return {"source": src, "words": sorted(words)}


def tokenizer_whole_words(tokenizer) -> List[str]:
    """Sorted lower-case alphabetic whole-word entries of a WordPiece tokenizer's vocabulary (no ``##`` pieces, no
    special tokens): the words it encodes as one token. The fallback for a model without ``known_words.json``."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # not a tokenizer we understand: know nothing rather than guess
        return []
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    words = set()
    for tok in vocab:
        if tok in special or tok.startswith("##") or tok.startswith("["):
            continue
        w = tok.lower()
        if w.isalpha():
            words.add(w)
    return sorted(words)


def unknown_words(phrase: str, known) -> List[str]:
    """The words of ``phrase`` (lower case, first occurrence order, no repeats) that are not in ``known`` (an
    iterable of lower-case words). ``known`` None or empty -> [] (nothing known about the vocabulary: claim nothing)."""
    if not known:
        return []
    known = known if isinstance(known, (set, frozenset)) else set(known)
    out: List[str] = []
    for w in words_of(phrase):
        if w not in known and w not in out:
            out.append(w)
    return out


def unknown_words_sentence(words: List[str]) -> str:
    """``["nodule"]`` -> "nodule is unknown to this model"; two or more -> "nodule, basal are unknown to this model";
    [] -> ""."""
    if not words:
        return ""
    return f"{', '.join(words)} {'is' if len(words) == 1 else 'are'} unknown to this model"
