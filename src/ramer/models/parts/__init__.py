"""The parts of RAMer, one small module per section of spec MODEL.md; ``ramer.py`` assembles them.

========================  =======================================================  ==========
file                      part                                                     spec
========================  =======================================================  ==========
``attention.py``          masked multi-head attention (optional null key)          shared
``encoders.py``           uni-modal transformer encoders with a summary token      §2.1
``personality.py``        personality stream and auxiliary head                    §2.2
``context.py``            inter-/intra-personal attention, cross-modality fill     §2.3
``labelwise.py``          label-wise attention and classifier, max fusion          §3
``adversarial.py``        GRL, tier-1 common/specific adversary, tier-2 D_rec      §4.1, §4.3
``reconstruction.py``     auto-encoders, prototypes, cross-modal reconstruction    §4.2
``contrastive.py``        SupCon items and the memory queue                        §5
``shuffle.py``            aggregator and stack shuffle                             §6
========================  =======================================================  ==========
"""

from ramer.models.parts.adversarial import CommonSpecific, GradientReversal, RealFakeDiscriminator, grad_reverse
from ramer.models.parts.attention import MaskedAttention, zero_unless
from ramer.models.parts.context import ModalityLevelAttention
from ramer.models.parts.contrastive import ContrastiveMemory, contrastive_items
from ramer.models.parts.encoders import ModalityEncoder, check_segments
from ramer.models.parts.labelwise import LabelWiseAttention, LabelWiseClassifier, fuse_max
from ramer.models.parts.personality import PersonalityHead, PersonalityStream
from ramer.models.parts.reconstruction import CrossReconstruction, LabelAutoEncoder, StandInGate, modality_dropout
from ramer.models.parts.shuffle import (
    PERMUTATIONS,
    Aggregator,
    identity_permutations,
    pile_order,
    pile_permutations,
    random_permutations,
    shuffle_stack,
)

__all__ = [
    "PERMUTATIONS",
    "Aggregator",
    "CommonSpecific",
    "ContrastiveMemory",
    "CrossReconstruction",
    "GradientReversal",
    "LabelAutoEncoder",
    "LabelWiseAttention",
    "LabelWiseClassifier",
    "MaskedAttention",
    "ModalityEncoder",
    "check_segments",
    "ModalityLevelAttention",
    "PersonalityHead",
    "PersonalityStream",
    "RealFakeDiscriminator",
    "StandInGate",
    "contrastive_items",
    "fuse_max",
    "grad_reverse",
    "identity_permutations",
    "modality_dropout",
    "pile_order",
    "pile_permutations",
    "random_permutations",
    "shuffle_stack",
    "zero_unless",
]
