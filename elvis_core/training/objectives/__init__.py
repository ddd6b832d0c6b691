"""Training objectives, each an ``nn.Module`` returning a scalar loss; combined by weights from the config.

One module per method (each opens with its paper reference and what we changed):

====================  ==========================  ============================================================
config name           module                      method
====================  ==========================  ============================================================
``global``            :mod:`.global_infonce`      image–report InfoNCE (ConVIRT / CLIP)
``local``             :mod:`.gloria_local`        GLoRIA / BioViL word–region alignment over the batch
``region_sentence``   :mod:`.lovt`                LoVT region–sentence alignment within each sample
``elvis``             :mod:`.elvis`               ELVIS: LoVT's loss with soft intra-modal similarity targets
``intra``             :mod:`.intra`               ELVIS, the other reading: before/after-projection structure
``anatomy``           :mod:`.anatomy`             GK-MVLP anatomy-region ↔ sentence alignment
``negation``          :mod:`.negation`            "no X" must not match X's patches (ours)
``mirror``            :mod:`.mirror`              mirror consistency with sides swapped (ours)
====================  ==========================  ============================================================

:mod:`.shared` holds DDP gathering and the report-sentence helpers; :mod:`.registry` the name -> class table and
:class:`CombinedObjective`. Every name is re-exported here, so ``from elvis_core.training.objectives import X``
works for all of them.
"""

# flake8: noqa: F401  (re-exports, private names included, so that every old import path keeps working)
from elvis_core.training.objectives.shared import (Sentences, _AllGather, _rank_offset, all_gather_with_grad,
                                                   dist_info, sentence_embeddings, sentence_ids_from_tokens,
                                                   sentence_tensors, split_sentences, word_mask)
from elvis_core.training.objectives.global_infonce import GlobalInfoNCE
from elvis_core.training.objectives.gloria_local import LocalTokenPatch
from elvis_core.training.objectives.lovt import (RegionSentence, _LocalCrossModal, intra_sample_contrastive,
                                                 spatial_targets)
from elvis_core.training.objectives.elvis import ElvisLocal, similarity_targets
from elvis_core.training.objectives.intra import IntraModalSimilarity, _cos_matrix
from elvis_core.training.objectives.negation import NegationContrast, negated_sentence
from elvis_core.training.objectives.mirror import MirrorConsistency
from elvis_core.training.objectives.anatomy import AnatomyAlignment, AnatomyTransformer
from elvis_core.training.objectives.registry import OBJECTIVES, CombinedObjective, _anatomy_cls

__all__ = ["AnatomyAlignment", "AnatomyTransformer", "CombinedObjective", "ElvisLocal", "GlobalInfoNCE",
           "IntraModalSimilarity", "LocalTokenPatch", "MirrorConsistency", "NegationContrast", "OBJECTIVES",
           "RegionSentence", "Sentences", "all_gather_with_grad", "dist_info", "intra_sample_contrastive",
           "negated_sentence", "sentence_embeddings", "sentence_ids_from_tokens", "sentence_tensors",
           "similarity_targets", "spatial_targets", "split_sentences", "word_mask"]
