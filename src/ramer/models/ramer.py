"""RAMer (spec MODEL.md): this file only assembles the parts in ``ramer/models/parts``.

Pipeline, in the order of the spec:

0. §4.2 modality dropout (training): a hidden modality's scope tokens leave the presence mask
   that every step below reads
1. §2.1 uni-modal encoders                      ``h``  (B, N, M, H), zero where missing
2. §2.2 personality stream (+ target offset)    ``u = h + W_m e_p + t(s - s*)``
3. §2.3 inter-/intra-personal attention and cross-modality completion  ``g`` (B, N, M, H)
4. §3 label-wise attention over the target scope (target token weighted) ``r`` (B, M, C, H);
   availability ``A`` (B, M)
5. §4.2 auto-encoder, prototypes, cross-modal reconstruction ``r~``; final features
   ``f_m = r_m`` where visible, its stand-in (``model.stand_in``) otherwise
6. §4.1 specific / common features ``s_m``, ``c_m``, ``c_bar``
7. §6 stack ``T = [s_1..s_M, c_bar]`` (B, K, C, H) and the aggregator
8. §7 ``probs = (sigmoid(max_m logit_m(f)) + mean_k sigmoid(agg(T_k))) / 2``; on single-label data
   each sigmoid is a softmax over the labels and every classification term is softmax
   cross-entropy (``losses.classification``)
Training only: discriminators, stack shuffle, contrastive items, queue and prototype updates
(shared across ranks in distributed training), personality prediction, modality dropout and the
detached pass giving the reconstruction targets of hidden modalities (``_hidden_real``).

Axis letters: b batch, n tokens, p persons, s segments, m modality, c labels, h hidden,
k stack sources, P code size, i contrastive items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ramer import dist
from ramer.batch import MODALITIES, Batch
from ramer.config import LossConfig, ModelConfig
from ramer.models import losses
from ramer.models.base import DataSpec, LossResult, label_probs
from ramer.models.parts import (
    PERMUTATIONS,
    Aggregator,
    CommonSpecific,
    ContrastiveMemory,
    CrossReconstruction,
    LabelAutoEncoder,
    LabelWiseAttention,
    LabelWiseClassifier,
    ModalityEncoder,
    ModalityLevelAttention,
    PersonalityHead,
    PersonalityStream,
    RealFakeDiscriminator,
    StandInGate,
    check_segments,
    contrastive_items,
    fuse_max,
    modality_dropout,
    shuffle_stack,
    zero_unless,
)


@dataclass
class RAMerOutput:
    """What ``RAMer.forward`` returns; the same fields in train and eval mode.

    ``None`` marks a part that is switched off, or (``# train``) work done only in training mode.
    """

    logits: Tensor  # (B, C) max over usable modalities of the label-wise logits of the final features
    probs: Tensor  # (B, C) the §7 score
    modality_logits: Tensor  # (B, M, C) label-wise logits of the final features f_m
    agg_logits: Tensor  # (B, K, C) aggregator on each unshuffled source of the stack
    label_features: Tensor  # (B, M, C, H) r_m of §3 (before any replacement)
    label_logits: Tensor  # (B, M, C) label-wise logits of r_m
    final: Tensor  # (B, M, C, H) f_m: r_m where visible, its stand-in otherwise (0 where unusable)
    available: Tensor  # (B, M) bool: A_m, modality present somewhere in the target scope
    visible: Tensor  # (B, M) bool: available and not hidden by modality dropout
    dropped: Tensor  # (B, M) bool: hidden by modality dropout (all False in eval mode)
    trusted: Tensor  # (B, M) bool: r_m may be used: visible, or built by §2.3 from completed stand-ins
    usable: Tensor  # (B, M) bool: f_m is defined (mask of the max-pool, the stack, tier 1)
    stack: Tensor  # (B, K, C, H) sources of §6 (K = M + 1 with the common feature, else M)
    stack_mask: Tensor  # (B, K) bool
    codes: Tensor | None  # (B, M, C, P) z_m = E_m(r_m); reconstruction or contrastive on
    autoencoded: Tensor | None  # (B, M, C, H) r^_m = G_m(z_m)
    reconstructed: Tensor | None  # (B, M, C, H) r~_m, cross-modal reconstruction
    reconstructed_logits: Tensor | None  # (B, M, C) label-wise logits of r~_m
    beta: Tensor | None  # (B, M, C, H) second reconstruction pass (model.beta)
    specific: Tensor | None  # (B, M, C, H) s_m (tier 1)
    common: Tensor | None  # (B, M, C, H) c_m (tier 1)
    common_mean: Tensor | None  # (B, C, H) c_bar (tier 1)
    cml_logits: Tensor | None  # (B, C) common classifier (tier 1)
    disc_specific: Tensor | None = None  # (B, M, C, M) D_mod(s_m)  # train
    disc_common: Tensor | None = None  # (B, M, C, M) D_mod(GRL(c_m))  # train
    disc_real: Tensor | None = None  # (B, M, C) D_rec(r_m)  # train
    disc_fake: Tensor | None = None  # (B, M, C) D_rec(GRL(r~_m))  # train
    shuffle_logits: Tensor | None = None  # (B, K, C) aggregator on shuffled virtual samples  # train
    shuffle_targets: Tensor | None = None  # (B, K, C)  # train
    shuffle_mask: Tensor | None = None  # (B, K, C) bool  # train
    items: Tensor | None = None  # (I, P) unit contrastive items of this batch  # train
    item_classes: Tensor | None = None  # (I,)  # train
    queue_items: Tensor | None = None  # (Q', P) the filled queue before this batch  # train
    queue_classes: Tensor | None = None  # (Q',)  # train
    personality_pred: Tensor | None = None  # (B, P, d_pi) pi_p predicted before injection  # train
    hidden_real: Tensor | None = None  # (B, M, C, H) r_m of each hidden modality, from its real tokens  # train


class QueueAndPrototypes:
    """The state a RAMer model keeps across steps, shared across ranks in distributed training: the
    contrastive queue (``self.memory``) and the class prototypes (``self.reconstruction``)."""

    @torch.no_grad()
    def _enqueue(self, items: Tensor, classes: Tensor) -> None:
        """Enqueue ``items`` (every process's, in rank order, in distributed training: the queues stay
        equal); a subset, when needed, is drawn on rank 0 and broadcast."""
        items = items.detach()
        if dist.world_size() > 1 and 0 < self.memory.size < items.shape[0]:
            keep = dist.broadcast_from_main(torch.randperm(items.shape[0], device=items.device)[: self.memory.size])
            items, classes = items[keep], classes[keep]
        self.memory._enqueue(items, classes)

    @staticmethod
    def _share_items(out) -> tuple[Tensor, Tensor]:
        """Distributed training: the other ranks' contrastive items become keys of this rank's SupCon.

        One process on the joined batch contrasts every item with every other item of the batch;
        here each rank's anchors also meet the other ranks' items (gathered with their gradient, so
        each item is trained by every rank's loss, as in one process). They are put in front of the
        queue snapshot, which only ever serves as keys. Returns every rank's items and classes in
        rank order (this process's own in a single process), which the queue takes."""
        if dist.world_size() == 1:
            return out.items, out.item_classes
        parts = dist.all_gather_rows_with_grad(out.items)
        classes = dist.all_gather_rows(out.item_classes)
        bounds = np.cumsum([0] + [p.shape[0] for p in parts])
        others = [i for i in range(len(parts)) if i != dist.rank()]
        out.queue_items = torch.cat([parts[i] for i in others] + [out.queue_items.to(out.items.dtype)])
        out.queue_classes = torch.cat([classes[bounds[i] : bounds[i + 1]] for i in others] + [out.queue_classes])
        return torch.cat(parts), classes

    @torch.no_grad()
    def _update_prototypes(self, sums: Tensor, counts: Tensor) -> None:
        """Distributed training: the sums and counts of all processes (all-reduce), so every process
        takes the same EMA step, the one a single process on the joined batch would take."""
        if dist.world_size() > 1:
            sums, counts = dist.all_reduce_sum_(sums.contiguous()), dist.all_reduce_sum_(counts.contiguous())
        self.reconstruction._update_prototypes(sums, counts)


class RAMer(QueueAndPrototypes, nn.Module):
    uses_every_parameter = True  # a gradient at every step (tests/test_baselines.py): DDP skips its search

    def __init__(self, cfg: ModelConfig, loss_cfg: LossConfig, spec: DataSpec) -> None:
        super().__init__()
        self.cfg, self.weights = cfg, loss_cfg
        self.single_label = spec.single_label  # softmax + cross-entropy, else sigmoids + BCE
        H, C, M = cfg.hidden, spec.n_labels, len(MODALITIES)
        on = lambda part: not cfg.off(part)  # noqa: E731
        self.encoders = nn.ModuleDict(
            {
                m: ModalityEncoder(
                    spec.dims[m], H, cfg.heads, cfg.ffn, getattr(cfg.layers, m), cfg.dropout, cfg.max_segments
                )
                for m in MODALITIES
            }
        )
        with_personality = on("no_personality") and spec.personality_dim is not None
        self.personality = PersonalityStream(spec.personality_dim, H, M, cfg.dropout) if with_personality else None
        self.personality_head = PersonalityHead(H, M, spec.personality_dim) if with_personality else None
        self.target_embedding = nn.Embedding(2 * cfg.target_offset + 1, H) if cfg.target_offset > 0 else None
        self.context = ModalityLevelAttention(H, cfg.heads, M, cfg.dropout) if on("no_modality_attention") else None
        self.labelwise = LabelWiseAttention(M, C, H, cfg.target_prior)
        self.classifier = LabelWiseClassifier(M, C, H)
        with_rec, with_cl = on("no_reconstruction"), on("no_contrastive")
        # Without reconstruction, contrastive learning keeps E_m as its projection head (no decoder).
        self.autoencoder = LabelAutoEncoder(M, H, cfg.proj_size, decoder=with_rec) if with_rec or with_cl else None
        self.reconstruction = CrossReconstruction(M, C, H, cfg.proj_size, cfg.proto_momentum) if with_rec else None
        self.gate = StandInGate(M, H) if with_rec and cfg.stand_in == "gate" else None
        self.memory = ContrastiveMemory(cfg.queue_size, cfg.proj_size) if with_cl else None
        self.adversary = CommonSpecific(M, C, H, cfg.dropout) if on("no_adversarial") else None
        self.rec_adversary = RealFakeDiscriminator(H, cfg.dropout) if with_rec and on("no_rec_adversarial") else None
        self.stack_common = self.adversary is not None and on("no_stack")
        self.aggregator = Aggregator(C, H, cfg.dropout)
        self.shuffle = on("no_shuffle")
        self.p_drop = cfg.modality_dropout if on("no_modality_dropout") else 0.0

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> RAMerOutput:
        P, S = batch.grid
        check_segments(S, self.cfg.max_segments)
        train = self.training
        valid = batch.valid  # (B, N)
        present = torch.stack([batch.present[m] & valid for m in MODALITIES], -1)  # (B, N, M)
        scope = batch.scope & valid  # (B, N)
        available = (present & scope.unsqueeze(-1)).any(1)  # (B, M): A_m

        # §4.2 modality dropout, first: a hidden modality's scope tokens are removed from every path
        # below (encoder keys, §2.3, label attention, prototype weights), as if truly missing
        dropped = modality_dropout(available, self.p_drop) if train and self.p_drop > 0 else torch.zeros_like(available)
        seen = present & ~(dropped.unsqueeze(1) & scope.unsqueeze(-1))  # (B, N, M)
        visible = available & ~dropped  # (B, M)

        # §2.1-§3 label-specific features of the target scope
        r, personality_pred = self._label_features(batch, seen, scope, head=train)  # (B, M, C, H)
        label_logits = self.classifier(r)  # (B, M, C)
        # r_m may be used as it is where visible, or where §2.3 built it from completed stand-ins
        trusted = visible | scope.any(1, keepdim=True) if self.context is not None else visible  # (B, M)

        # §4.2 reconstruction
        codes = autoencoded = reconstructed = reconstructed_logits = beta = unit = stand_in = hidden_real = None
        if self.autoencoder is not None:
            codes = self.autoencoder.encode(r)  # (B, M, C, P)
        if self.reconstruction is not None:
            unit = F.normalize(codes, dim=-1)
            autoencoded = self.autoencoder.decode(codes)  # (B, M, C, H)
            from_context = trusted & ~visible  # (B, M): missing from the scope, r_m built by §2.3
            own = from_context if self.cfg.stand_in == "own_slot" else None
            reconstructed = self.reconstruction(
                autoencoded, unit, visible, trusted, self.autoencoder.decode, hard=not train, own_usable=own
            )  # (B, M, C, H)
            reconstructed_logits = self.classifier(reconstructed)
            stand_in = reconstructed
            if self.cfg.beta:
                beta = stand_in = self.reconstruction.second_pass(reconstructed)
            if self.gate is not None:  # stand_in: gate
                stand_in = torch.where(from_context[:, :, None, None], self.gate(r, stand_in), stand_in)
            elif self.cfg.stand_in == "context":
                stand_in = torch.where(from_context[:, :, None, None], r, stand_in)
            final = torch.where(visible[:, :, None, None], r, stand_in)  # (B, M, C, H)
            usable = torch.ones_like(visible)
            if train and bool(dropped.any()):
                hidden_real = self._hidden_real(batch, present, scope, dropped, r)
        else:
            usable = trusted
            final = torch.where(usable[:, :, None, None], r, 0.0)

        # §4.1 commonality and specificity (tier 1)
        specific = common = common_mean = cml_logits = None
        sources = final
        if self.adversary is not None:
            specific, common, common_mean, cml_logits = self.adversary(final, usable)
            sources = specific

        # §6 stack
        stack, stack_mask = sources, usable  # (B, M, C, H), (B, M)
        if self.stack_common:
            stack = torch.cat([sources, common_mean.unsqueeze(1)], 1)  # (B, M+1, C, H)
            stack_mask = torch.cat([usable, usable.any(1, keepdim=True)], 1)  # (B, M+1)
        agg_logits = self.aggregator(stack)  # (B, K, C)

        # §7 scores
        modality_logits = self.classifier(final)  # (B, M, C)
        logits = fuse_max(modality_logits, usable)  # (B, C)
        w = stack_mask.to(agg_logits.dtype).unsqueeze(-1)  # (B, K, 1)
        agg_p = label_probs(agg_logits, self.single_label)  # (B, K, C)
        agg_probs = torch.where(w.sum(1) > 0, (agg_p * w).sum(1) / w.sum(1).clamp_min(1.0), agg_p.mean(1))  # (B, C)
        probs = 0.5 * (label_probs(logits, self.single_label) + agg_probs)

        out = RAMerOutput(
            logits=logits, probs=probs, modality_logits=modality_logits, agg_logits=agg_logits,
            label_features=r, label_logits=label_logits, final=final, available=available, visible=visible,
            dropped=dropped, trusted=trusted, usable=usable, stack=stack, stack_mask=stack_mask, codes=codes,
            autoencoded=autoencoded, reconstructed=reconstructed, reconstructed_logits=reconstructed_logits,
            beta=beta, specific=specific, common=common, common_mean=common_mean, cml_logits=cml_logits,
            personality_pred=personality_pred, hidden_real=hidden_real,
        )  # fmt: skip
        if train:
            self._training_extras(out, batch, unit, reconstructed if beta is None else beta)
        return out

    def _label_features(self, batch: Batch, present: Tensor, scope: Tensor, head: bool) -> tuple[Tensor, Tensor | None]:
        """§2.1-§3 from the tokens marked in ``present`` (B, N, M): label-specific features r (B, M, C, H)
        of the target ``scope`` (B, N); with ``head``, also the personality prediction (B, P, d_pi)."""
        P, S = batch.grid
        valid = batch.valid  # (B, N)

        # §2.1 uni-modal encoders
        h = torch.stack(
            [self.encoders[m](batch.features[m], present[..., i], batch.segment) for i, m in enumerate(MODALITIES)], 2
        )  # (B, N, M, H)

        # §2.2 personality stream (the auxiliary head reads h, before the injection)
        u, e_tok, e_known, personality_pred = h, None, None, None
        if self.personality is not None and batch.personality is not None:
            known = batch.personality_present & valid.view(-1, P, S).any(-1)  # (B, P)
            e = self.personality(batch.personality, known)  # (B, P, H)
            e_tok, e_known = e.repeat_interleave(S, 1), known.repeat_interleave(S, 1) & valid  # (B, N, H), (B, N)
            u = u + self.personality.condition(e_tok)  # (B, N, M, H)
            if head:
                personality_pred = self.personality_head(h, present, (P, S))  # (B, P, d_pi)
        if self.target_embedding is not None:
            u = u + self._offset_embedding(batch).unsqueeze(2)  # (B, N, M, H)
        u = zero_unless(valid[:, :, None, None], u)

        # §2.3 modality-level attention: every valid token gets every modality (stand-ins where missing)
        if self.context is not None:
            g = self.context(u, present, valid, (P, S), e_tok, e_known)  # (B, N, M, H)
            defined = valid.unsqueeze(-1).expand_as(present)  # (B, N, M)
        else:
            g, defined = u, present

        # §3 label-wise attention over the target scope
        return self.labelwise(g, defined & scope.unsqueeze(-1), batch.target), personality_pred  # (B, M, C, H)

    @torch.no_grad()
    def _hidden_real(self, batch: Batch, present: Tensor, scope: Tensor, dropped: Tensor, r: Tensor) -> Tensor:
        """The reconstruction target of each modality hidden by modality dropout: its label feature
        from the real tokens (§2.1-§3 on the samples that hid something, with every present token,
        in eval mode, detached), (B, M, C, H); zero where nothing was hidden. The only read of a
        hidden modality's features."""
        rows = dropped.any(1).nonzero().squeeze(1)  # (B',)
        modes = [(module, module.training) for module in self.modules()]
        self.train(False)
        try:
            real, _ = self._label_features(
                batch.select(rows), present.index_select(0, rows), scope.index_select(0, rows), head=False
            )  # (B', M, C, H)
        finally:
            for module, training in modes:  # back to each module's own mode (a frozen part stays in eval)
                module.training = training
        hidden = torch.zeros_like(r).index_copy_(0, rows, real.to(r.dtype))
        return torch.where(dropped[:, :, None, None], hidden, 0.0)

    def _offset_embedding(self, batch: Batch) -> Tensor:
        """A learned embedding of each token's segment offset from the target segment, (B, N, H)."""
        R, S = self.cfg.target_offset, batch.grid[1]
        target_segment = batch.target.clamp_min(0) % S  # (B,)
        offset = (batch.segment - target_segment.unsqueeze(1)).clamp(-R, R) + R  # (B, N)
        return torch.where((batch.target >= 0)[:, None, None], self.target_embedding(offset), 0.0)

    def _training_extras(self, out: RAMerOutput, batch: Batch, unit: Tensor | None, rec: Tensor | None) -> None:
        """Work needed only by the training losses, and the state updates (queue, prototypes)."""
        labels = batch.labels
        if self.adversary is not None:
            out.disc_specific, out.disc_common = self.adversary.discriminate(out.specific, out.common)
        if self.rec_adversary is not None:
            out.disc_real, out.disc_fake = self.rec_adversary(out.label_features, rec)
        if self.shuffle:
            B, K, C, _ = out.stack.shape
            sigma, rho = PERMUTATIONS[self.cfg.shuffle or "random"](B, K, C, out.stack.device)
            shuffled, out.shuffle_targets, out.shuffle_mask = shuffle_stack(
                out.stack, labels, out.stack_mask, sigma, rho
            )  # (B, K, C, H), (B, K, C), (B, K, C)
            out.shuffle_logits = self.aggregator(shuffled)  # (B, K, C)
        if self.memory is not None:
            rec_codes = None if out.reconstructed is None else self.autoencoder.encode(out.reconstructed)
            out.items, out.item_classes = contrastive_items(out.codes, rec_codes, out.visible, out.available, labels)
            out.queue_items, out.queue_classes = self.memory.snapshot()
            self._enqueue(*self._share_items(out))
        if self.reconstruction is not None:
            self._update_prototypes(*self.reconstruction.prototype_sums(unit, out.visible, labels))

    # ------------------------------------------------------------------ loss
    def loss(self, out: RAMerOutput, batch: Batch) -> LossResult:
        """Spec §7: the weighted sum of every term whose part is on (and computed in this mode)."""
        w, y = self.weights, batch.labels
        terms: dict[str, Tensor] = {}
        total = 0.0

        def add(name: str, value: Tensor, weight: float) -> None:
            nonlocal total
            terms[name] = value.detach()
            total = total + weight * value

        def cls(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
            return losses.classification(logits, targets, mask, self.single_label)

        add("cls", cls(out.logits, y), 1.0)
        lsr_logits = fuse_max(out.label_logits, out.trusted)  # (B, C)
        add("lsr", cls(lsr_logits, y, out.trusted.any(1, keepdim=True)), w.w_lsr)
        if out.reconstructed is not None:
            add("aug", cls(out.reconstructed_logits.amax(1), y), w.w_aug)
            # targets: r_m (detached unless loss.detach_targets is off); a hidden modality's target is its
            # label feature from its real tokens
            real = out.label_features.detach() if w.detach_targets else out.label_features
            ae_target = real
            if out.hidden_real is not None:
                real = torch.where(out.dropped[:, :, None, None], out.hidden_real, real)  # (B, M, C, H)
            add("ae", losses.feature_mse(out.autoencoded, ae_target, out.visible), w.w_ae)
            add("cross", losses.feature_mse(out.reconstructed, real, out.available), w.w_cross)
            if out.beta is not None:
                add("beta", losses.feature_mse(out.beta, real, out.available), w.w_beta)
        if out.items is not None:
            value = losses.supcon(out.items, out.item_classes, out.queue_items, out.queue_classes, self.cfg.temperature)
            add("supcon", value, w.w_cl)
        agg_targets = y.unsqueeze(1).expand_as(out.agg_logits)  # (B, K, C)
        add("agg", cls(out.agg_logits, agg_targets, out.stack_mask.unsqueeze(-1)), w.w_agg)
        if out.shuffle_logits is not None:
            # single-label: a virtual sample's label slots come from different samples, so its target
            # is the normalised multi-hot row; slots of unusable sources and samples without a label
            # are left out (losses.classification)
            add("shuffle", cls(out.shuffle_logits, out.shuffle_targets, out.shuffle_mask), w.w_shuf)
        if out.specific is not None:
            if out.disc_specific is not None:
                add("spec", losses.modality_ce(out.disc_specific, out.usable), w.w_adv)
                add("com", losses.modality_ce(out.disc_common, out.usable), w.w_adv)
            add("orth", losses.orthogonality(out.specific, out.common, out.usable), w.w_orth)
            add("cml", cls(out.cml_logits, y), w.w_cml)
        if out.disc_real is not None:
            add("rec_adv", losses.real_fake(out.disc_real, out.disc_fake, out.visible, out.available), w.w_radv)
        if out.personality_pred is not None:
            value = losses.personality_mse(out.personality_pred, batch.personality, batch.personality_present)
            add("pers", value, w.w_pers)
        return LossResult(total=total, terms=terms)
