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
