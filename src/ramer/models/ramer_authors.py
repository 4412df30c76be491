"""``--model ramer-authors``: the RAMer authors' own design, as their released model code has it
(``../shared/spec/AUTHORS_CODE.md`` §1-9), built from this project's parts. ``ramer`` (spec
MODEL.md) stays the default; docs/MODEL.md compares the two mechanism by mechanism.

Pipeline:

1. uni-modal encoders (``ModalityEncoder``)                     ``h`` (B, N, M, H)
2. with personality: ``e_p`` from a personality encoder; a copy on every token of the target scope
   joins each modality's tokens before the label-wise attention (the authors' compiled MEmoR
   version)
3. label-wise attention over the target scope, unscaled scores   ``U`` (B, M, C, H)
4. label auto-encoder ``z_m = E_m(U_m)``, ``recon_m = G_m(z_m)``
5. cross reconstruction of **every** modality: ``aug_m = F_m([recon_n for n != m ; pad_m])``
   (``F_m`` one ``Linear(3H -> H)``), ``pad_m`` decoded from the mix of ``m``'s prototypes weighted
   by ``m``'s own code; second pass ``beta_m = F_m([aug_n for all n])``. ``beta`` replaces every
   modality downstream, present or not. The prototypes take one EMA step per sample, in batch
   order
6. adversary: private ``P_m(U_m)`` on the originals, common ``Q(beta_m)`` on the reconstructions,
   one modality discriminator (the common branch through a gradient reversal), orthogonality of
   the ``C x C`` products, a common classifier on the **sum** of the common features at label
   slot 0
7. aggregator on the stack ``[beta_1 .. beta_M]`` (no common source); shuffled virtual samples by
   ``model.shuffle`` (default ``pile``, the authors' card deal)
8. ``probs = (sigmoid(max_m logit_m(beta_m)) + mean_m sigmoid(agg(beta_m))) / 2``; per-modality
   classifiers (inner products, no bias) shared by the ``U``, ``aug`` and ``beta`` levels

The loss terms carry the authors' names (``LOSS_WEIGHTS``): ``lsr_clf``, ``aug_clf``, ``beta_clf``,
``cl``, ``recon_mse``, ``aug_mse``, ``beta_mse``, ``shuffle_aug_clf``, ``cml``, ``adv_private``,
``adv_common``, ``diff``. As in their code, the MSE targets are the attached ``U`` (the joint
gradient; ``loss.detach_targets`` is ``ramer``'s), per-modality terms are summed over the
modalities, and the aggregator's unshuffled loss is not added.

Defects of the released code are not reproduced (AUTHORS_CODE.md, "Known defects"): a modality
with no token in the scope gets ``U_m = 0`` (the encoders' summary token and the masked attention,
no NaN; with personality, ``U_m`` from the personality tokens alone) and is left out where its
``U_m`` would be read as real: the ``U``-level classification, the reconstruction targets, the
prototypes, its contrastive items, and the other modalities' reconstruction, which reads its
prototype decode instead of ``recon_m``. The adversary's terms take every modality, as the
authors'. Prototype updates (the per-sample EMA in closed form) and shuffles are tensor operations;
SupCon uses the queue as keys only; any batch size works. What still differs from the authors'
code (docs/MODEL.md): the encoders (pre-LN, a summary token), the personality encoder (an MLP per
person, not a 12-layer transformer over the vector's copies at each token), the target-token bonus
of the label attention, the optimiser (AdamW, not BertAdam) and a queue that starts empty.

Axis letters: b batch, n tokens, m modality, c labels, h hidden, k stack sources, P code size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramer import dist
from ramer.batch import MODALITIES, Batch
from ramer.config import LossConfig, ModelConfig
from ramer.errors import RamerError
from ramer.models import losses
from ramer.models.base import DataSpec, LossResult, label_probs
from ramer.models.parts import (
    PERMUTATIONS,
    Aggregator,
    ContrastiveMemory,
    CrossReconstruction,
    LabelAutoEncoder,
    LabelWiseAttention,
    LabelWiseClassifier,
    ModalityEncoder,
    check_segments,
    contrastive_items,
    fuse_max,
    grad_reverse,
    shuffle_stack,
)
from ramer.models.ramer import QueueAndPrototypes

# the authors' name of each loss term -> the ``loss`` config field holding its weight
LOSS_WEIGHTS: dict[str, str] = {
    "lsr_clf": "w_lsr",
    "aug_clf": "w_aug",
    "beta_clf": "w_beta_cls",
    "cl": "w_cl",
    "recon_mse": "w_ae",
    "aug_mse": "w_cross",
    "beta_mse": "w_beta_mse",
    "shuffle_aug_clf": "w_shuf",
    "cml": "w_cml",
    "adv_private": "w_adv",
    "adv_common": "w_adv",
    "diff": "w_diff",
}
# the authors' fixed values: private and common extractors, common classifier, modality discriminator
PRIVATE_DROPOUT, COMMON_DROPOUT, CML_DROPOUT, DISCRIMINATOR_DROPOUT = 0.1, 0.3, 0.1, 0.1


@dataclass
class AuthorsOutput:
    logits: Tensor  # (B, C) max over modalities of the beta-level logits
    probs: Tensor  # (B, C)
    available: Tensor  # (B, M) bool: the modality has a token in the target scope
    label_features: Tensor  # (B, M, C, H) U
    recon: Tensor  # (B, M, C, H)
    aug: Tensor  # (B, M, C, H)
    beta: Tensor  # (B, M, C, H)
    u_logits: Tensor  # (B, M, C)
    aug_logits: Tensor  # (B, M, C)
    beta_logits: Tensor  # (B, M, C)
    agg_logits: Tensor  # (B, M, C)
    private: Tensor | None = None  # (B, M, C, H)  # train
    common: Tensor | None = None  # (B, M, C, H)  # train
    disc_private: Tensor | None = None  # (B, M, C, M)  # train
    disc_common: Tensor | None = None  # (B, M, C, M)  # train
    cml_logits: Tensor | None = None  # (B, C)  # train
    shuffle_logits: Tensor | None = None  # (B, M, C)  # train
    shuffle_targets: Tensor | None = None  # (B, M, C)  # train
    items: Tensor | None = None  # (I, P)  # train
    item_classes: Tensor | None = None  # (I,)  # train
    queue_items: Tensor | None = None  # (Q', P)  # train
    queue_classes: Tensor | None = None  # (Q',)  # train


def product_norm(a: Tensor, b: Tensor) -> Tensor:
    """``||a b^T||_F^2`` per sample over the ``C x C`` product of (B, C, H) features, mean over the batch."""
    return (a.float() @ b.float().transpose(1, 2)).pow(2).sum((1, 2)).mean()


class RAMerAuthors(QueueAndPrototypes, nn.Module):
    uses_every_parameter = True  # a gradient at every step (tests/test_baselines.py): DDP skips its search

    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig, spec: DataSpec) -> None:
        super().__init__()
        if cfg.ablations:
            raise RamerError("model.ablations switch parts of ramer off; ramer-authors has none")
        self.cfg, self.weights = cfg, loss_cfg
        self.single_label = spec.single_label
        H, C, M = cfg.hidden, spec.n_labels, len(MODALITIES)
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(
                    spec.dims[m], H, cfg.heads, cfg.ffn, getattr(cfg.layers, m), cfg.dropout, cfg.max_segments
                )
                for m in MODALITIES
            }
        )
        d_pi = spec.personality_dim
        self.personality = (
            nn.Sequential(nn.LayerNorm(d_pi), nn.Linear(d_pi, H), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(H, H))
            if d_pi is not None
            else None
        )
        self.labelwise = LabelWiseAttention(M, C, H, cfg.target_prior, scaled=False)
        self.classifier = LabelWiseClassifier(M, C, H, bias=False)  # shared by the U, aug and beta levels
        self.autoencoder = LabelAutoEncoder(M, H, cfg.proj_size)
        self.reconstruction = CrossReconstruction(
            M, C, H, cfg.proj_size, cfg.proto_momentum, cross_hidden=False, own_code=True
        )
        self.memory = ContrastiveMemory(cfg.queue_size, cfg.proj_size)
        self.private = nn.ModuleList(
            nn.Sequential(nn.Linear(H, H), nn.Dropout(PRIVATE_DROPOUT), nn.Tanh()) for _ in range(M)
        )
        self.common = nn.Sequential(nn.Linear(H, H), nn.Dropout(COMMON_DROPOUT), nn.Tanh())
        self.discriminator = nn.Sequential(
            nn.Linear(H, H // 2), nn.Dropout(DISCRIMINATOR_DROPOUT), nn.ReLU(), nn.Linear(H // 2, M)
        )
        self.common_classifier = nn.Sequential(nn.Linear(H, C), nn.Dropout(CML_DROPOUT))
        self.aggregator = Aggregator(C, H, 0.0, nn.ReLU)
        for module in (self.autoencoder, self.aggregator):  # the authors' MLLinear: Xavier-uniform weights
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
        self.permutations = PERMUTATIONS[cfg.shuffle or "pile"]

    def forward(self, batch: Batch) -> AuthorsOutput:
        check_segments(batch.grid[1], self.cfg.max_segments)
        valid = batch.valid  # (B, N)
        scope = batch.scope & valid  # (B, N)
        present = torch.stack([batch.present[m] & valid for m in MODALITIES], -1)  # (B, N, M)
        available = (present & scope.unsqueeze(-1)).any(1)  # (B, M)
        h = torch.stack(
            [self.encoders[m](batch.features[m], present[..., i], batch.segment) for i, m in enumerate(MODALITIES)], 2
        )  # (B, N, M, H)
        keys = present & scope.unsqueeze(-1)  # (B, N, M)
        if self.personality is not None and batch.personality is not None:
            P, S = batch.grid
            known = batch.personality_present  # (B, P)
            # the encoder reads zeros where the person is unknown: no value there reaches a gradient
            pi = torch.where(known.unsqueeze(-1), batch.personality, 0.0)
            e = torch.where(known.unsqueeze(-1), self.personality(pi), 0.0)  # (B, P, H)
            e_tok = e.repeat_interleave(S, 1)  # (B, N, H): each token's person
            e_keys = known.repeat_interleave(S, 1) & scope  # (B, N)
            h = torch.cat([h, e_tok.unsqueeze(2).expand_as(h)], 1)  # (B, 2N, M, H): personality tokens after
            keys = torch.cat([keys, e_keys.unsqueeze(-1).expand_as(keys)], 1)  # (B, 2N, M)
        U = self.labelwise(h, keys, batch.target)  # (B, M, C, H), 0 where a modality has no key

        codes = self.autoencoder.encode(U)  # (B, M, C, P)
        unit = F.normalize(codes, dim=-1)
        recon = self.autoencoder.decode(codes)  # (B, M, C, H)
        aug = self.reconstruction(recon, unit, available, available, self.autoencoder.decode, hard=not self.training)
        beta = self.reconstruction.second_pass(aug)  # (B, M, C, H)

        u_logits, aug_logits, beta_logits = self.classifier(U), self.classifier(aug), self.classifier(beta)
        agg_logits = self.aggregator(beta)  # (B, M, C)
        logits = beta_logits.amax(1)  # (B, C)
        probs = 0.5 * (label_probs(logits, self.single_label) + label_probs(agg_logits, self.single_label).mean(1))
        out = AuthorsOutput(
            logits=logits, probs=probs, available=available, label_features=U, recon=recon, aug=aug, beta=beta,
            u_logits=u_logits, aug_logits=aug_logits, beta_logits=beta_logits, agg_logits=agg_logits,
        )  # fmt: skip
        if self.training:
            self._training_extras(out, batch, codes, unit)
        return out

    def _training_extras(self, out: AuthorsOutput, batch: Batch, codes: Tensor, unit: Tensor) -> None:
        labels = batch.labels
        U, beta = out.label_features, out.beta
        out.private = torch.stack([p(U[:, i].contiguous()) for i, p in enumerate(self.private)], 1)  # (B, M, C, H)
        out.common = self.common(beta)  # (B, M, C, H)
        out.disc_private = self.discriminator(out.private)
        out.disc_common = self.discriminator(grad_reverse(out.common))
        out.cml_logits = self.common_classifier(out.common.sum(1)[:, 0])  # (B, C): label slot 0 only
        B, K, C, _ = beta.shape
        sigma, rho = self.permutations(B, K, C, beta.device)
        everything = torch.ones(B, K, dtype=torch.bool, device=beta.device)
        shuffled, out.shuffle_targets, _ = shuffle_stack(beta, labels, everything, sigma, rho)
        out.shuffle_logits = self.aggregator(shuffled)  # (B, K, C)
        # contrastive items: the codes of U (available modalities), aug and beta (every modality)
        level_codes = self.autoencoder.encode(torch.cat([out.aug, beta]))  # (2B, M, C, P)
        real_items, real_classes = contrastive_items(codes, None, out.available, everything, labels)
        rec_items, rec_classes = contrastive_items(
            level_codes, None, torch.cat([everything, everything]), everything, torch.cat([labels, labels])
        )
        out.items, out.item_classes = torch.cat([real_items, rec_items]), torch.cat([real_classes, rec_classes])
        out.queue_items, out.queue_classes = self.memory.snapshot()
        self._enqueue(*self._share_items(out))
        self._update_prototypes_in_order(unit, out.available, labels)

    @torch.no_grad()
    def _update_prototypes_in_order(self, unit: Tensor, available: Tensor, labels: Tensor) -> None:
        """The authors' per-sample EMA (``update_in_order``). In distributed training every rank's
        codes are gathered and put back in the order one process would see the joined batch in:
        every rank holds as many samples, and sample ``i`` of rank ``r`` is sample ``i * world + r``
        of it (``dist.shard_indices``); so every process takes that process's step."""
        world = dist.world_size()
        if world > 1:
            gathered = [
                dist.all_gather_rows(x).unflatten(0, (world, -1)).transpose(0, 1).flatten(0, 1)
                for x in (unit.detach().float(), labels.float(), available.to(torch.uint8))
            ]
            unit, labels, available = gathered[0], gathered[1], gathered[2].bool()
        self.reconstruction.update_in_order(unit, available, labels)

    def loss(self, out: AuthorsOutput, batch: Batch) -> LossResult:
        """The authors' terms (``LOSS_WEIGHTS``), each weighted by its ``loss`` config field."""
        y, avail = batch.labels, out.available
        M = avail.shape[1]
        terms: dict[str, Tensor] = {}
        total = 0.0

        def add(name: str, value: Tensor) -> None:
            nonlocal total
            terms[name] = value.detach()
            total = total + getattr(self.weights, LOSS_WEIGHTS[name]) * value

        def cls(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
            return losses.classification(logits, targets, mask, self.single_label)

        def mse(pred: Tensor) -> Tensor:  # summed over the modalities, as the authors sum three MSEs
            return M * losses.feature_mse(pred, out.label_features, avail)

        add("lsr_clf", cls(fuse_max(out.u_logits, avail), y, avail.any(1, keepdim=True)))
        add("aug_clf", cls(out.aug_logits.amax(1), y))
        add("beta_clf", cls(out.logits, y))
        if out.items is not None:
            add(
                "cl",
                losses.supcon(out.items, out.item_classes, out.queue_items, out.queue_classes, self.cfg.temperature),
            )
        add("recon_mse", mse(out.recon))
        add("aug_mse", mse(out.aug))
        add("beta_mse", mse(out.beta))
        if out.shuffle_logits is not None:
            add("shuffle_aug_clf", cls(out.shuffle_logits, out.shuffle_targets))
            add("cml", cls(out.cml_logits, y))
            everything = torch.ones_like(avail)
            add("adv_private", M * losses.modality_ce(out.disc_private, everything))
            add("adv_common", M * losses.modality_ce(out.disc_common, everything))
            s, c = out.private, out.common
            pairs = [(s[:, i], s[:, j]) for i in range(M) for j in range(i + 1, M)] + [
                (c[:, i], s[:, i]) for i in range(M)
            ]
            add("diff", sum(product_norm(a, b) for a, b in pairs))
        return LossResult(total=total, terms=terms)
