"""What each training image is conditioned on (its label, caption embedding, edge map, clip or low-resolution
version), gathered once when a training starts, and each step's batch of them; the text pooling's alignment."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..condition import Cond
from ..data import ImageSet, augment, to_model
from .batches import host_to_device


class TrainingConditions:
    """What each image of the data set is conditioned on: its label where the set has classes, its
    caption's embedding (pooled vector and tokens) where the model takes text, and its edge map where the
    model takes a spatial condition."""

    def __init__(self, data: ImageSet, model, cache_dir=None, progress: bool = True, data_config=None):
        self.labels = data.labels if data.labels is not None and data.num_classes > 0 else None
        self.text = None
        self.spatial = None  # (N, 1, S, S) uint8 edge maps of the prepared images, 255 on an edge
        # an upscaler's condition, each image's low-resolution version, made from the (augmented) image itself
        self.lowres = getattr(getattr(model, "config", None), "lowres", None)
        self.images = data.images
        if "spatial" in model.takes() and self.lowres is None:  # the detector's, or a paired sketch folder's
            from ..condition.edges import training_edge_maps

            self.spatial = training_edge_maps(data, model.config, data_config, cache_dir, progress=progress)
        self.audio = None  # condition/audio.py TrainingClips: each image paired with a clip of its digit per step
        if "audio" in model.takes():
            from ..condition.audio import TrainingClips

            if data.labels is None or data.num_classes == 0:
                raise ValueError(f"{data.source} has no classes, but the model is conditioned on spoken digits: audio "
                                 "pairs each image with a clip of its class (folders named 0..9)")
            self.audio = TrainingClips(model.config, data.class_names, progress)
            self.n_images = len(data)
        self.captions: list[str] = []
        if "text" in model.takes():
            from ..condition.text import caption_embeddings, load_text_encoder
            from ..condition.text_embed import fit_text_statistics

            if not data.captions or not any(data.captions):
                raise ValueError(f"{data.source} has no captions, but the model is conditioned on text: give the folder a "
                                 "captions.jsonl ({\"file\": ..., \"caption\": ...} a line) or train without text")
            cfg = model.config
            encoder = load_text_encoder(cfg.text_encoder, max_tokens=cfg.text_tokens)
            tqdm.write(f"text encoder {cfg.text_encoder}: embedding {len(data.captions)} captions (cached after the first run)")
            self.captions = [c or "" for c in data.captions]
            # Every wording of every image, embedded as one list: the captions first (row i is image
            # i's), then each image's variants; wordings[i, k] is the row of its k-th wording, and
            # image i has counts[i] of them (its caption alone where it has no variants).
            variants = data.caption_variants or [[] for _ in self.captions]
            if len(variants) != len(self.captions):
                raise ValueError(f"{data.source}: {len(variants)} lists of caption variants for {len(self.captions)} images")
            texts = list(data.captions)
            rows = [[i] for i in range(len(self.captions))]
            for i, more in enumerate(variants):
                rows[i] += range(len(texts), len(texts) + len(more))
                texts += more
            width = max(len(r) for r in rows)
            self.counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)  # (N,)
            self.wordings = torch.tensor([r + r[:1] * (width - len(r)) for r in rows], dtype=torch.int64)  # (N, K)
            if width > 1:
                tqdm.write(f"text: {len(texts) - len(self.captions)} other wordings of the captions; each step draws one "
                           "wording per image")
            self.text = caption_embeddings(texts, encoder, None if cache_dir is None else Path(cache_dir))
            # the conditioner's whitening from every wording, told which image each describes; a resumed
            # run's checkpoint overwrites it
            groups = torch.empty(len(texts), dtype=torch.int64)
            for i, r in enumerate(rows):
                groups[r] = i
            fit_text_statistics(model, self.text.pooled, self.text.tokens, self.text.mask, groups)

    def augmented(self, data: ImageSet, idx: torch.Tensor, data_cfg, generator: torch.Generator, device,
                  step: int = 0, seed: int = 0):
        """The training batch idx of step `step`: images (B, C, H, W) in [-1, 1] augmented (data.augment)
        and their Cond, each image's text one of its wordings drawn for (seed, step). An edge map rides
        along as one more channel through the same augment call, so it gets its image's crop and flip,
        and the random draws are those of the images alone."""
        batch = data.images[idx]
        if self.spatial is not None:
            batch = torch.cat([batch, self.spatial[idx]], dim=1)  # (B, C + 1, S, S)
        x = augment(host_to_device(batch, device), data_cfg, generator)
        c = data.images.shape[1]
        spatial = (x[:, c:] + 1) / 2 if self.spatial is not None else None  # (B, 1, H, W): 1 on an edge
        if self.lowres is not None:
            from ..condition.lowres import lowres_condition

            spatial = lowres_condition(x, self.lowres)  # (B, C, H, W): the augmented image's low-res version
        return x[:, :c], self(idx, device, spatial=spatial, wording=self._drawn_wording(idx, step, seed), step=step, seed=seed)

    def _drawn_wording(self, idx: torch.Tensor, step: int, seed: int) -> torch.Tensor | None:
        """Rows of self.text for images idx at a training step: uniform over each image's wordings.
        Stateless: one draw per image of the whole set from (seed, step), so a resumed run, any batch
        split and any number of processes pick the same wordings."""
        if self.text is None or self.wordings.shape[1] == 1:
            return None
        u = torch.rand(len(self.counts), generator=torch.Generator().manual_seed(seed * 1_000_003 + step + 77_777))
        k = (u[idx] * self.counts[idx]).long().clamp_(max=self.wordings.shape[1] - 1)
        return self.wordings[idx, k]

    def __call__(self, idx: torch.Tensor, device, *, data_cfg=None, spatial: torch.Tensor | None = None,
                 wording: torch.Tensor | None = None, step: int | None = None, seed: int = 0) -> Cond:
        """The Cond of images idx; their edge maps centre-cropped as data.to_model crops the images
        (data_cfg), unless `spatial` gives them already augmented; their text the caption's, or the rows
        `wording` of the embedded wordings; their spoken clip the one drawn for (seed, step) (a fixed draw
        when step is None)."""
        fields = {}
        if self.labels is not None:
            fields["labels"] = self.labels[idx].to(device)
        if self.text is not None:
            rows = idx if wording is None else wording
            fields.update(text=self.text.pooled[rows].to(device), text_tokens=self.text.tokens[rows].to(device),
                          text_mask=self.text.mask[rows].to(device))
        if self.spatial is not None:
            fields["spatial"] = spatial if spatial is not None else (to_model(self.spatial[idx].to(device), data_cfg) + 1) / 2
        if self.audio is not None:
            fields["audio"] = self.audio.draw(self.labels[idx], idx, self.n_images, step, seed).to(device)
        if self.lowres is not None:
            from ..condition.lowres import lowres_condition

            fields["spatial"] = spatial if spatial is not None else lowres_condition(
                to_model(self.images[idx].to(device), data_cfg), self.lowres)  # (B, C, H, W)
        return Cond(**fields)


def align_text(model, conds: TrainingConditions, data: ImageSet, train_idx: torch.Tensor, cfg, dev, progress: bool, say) -> None:
    """A new run whose text conditioners align their token pooling (text_align_steps > 0): each is
    trained against the training images and their wordings (condition/text_align.py), then stays frozen."""
    steps = getattr(cfg.model_config(), "text_align_steps", 0)
    if not steps or conds.text is None:
        return
    from ..condition.text_align import align_token_pool
    from ..condition.text_embed import TextConditioner

    images = to_model(data.images[train_idx], cfg.data)  # (N, C, H, W) in [-1, 1], centre-cropped
    pools = [m.token_pool for m in model.modules() if isinstance(m, TextConditioner) and m.token_pool is not None
             and any(p.requires_grad for p in m.parameters())]  # not an adapter's frozen base's
    for i, pool in enumerate(pools):  # a GAN has two conditioners
        loss = align_token_pool(pool, images, (conds.text.tokens, conds.text.mask), conds.wordings[train_idx],
                                conds.counts[train_idx], steps=steps, seed=cfg.train.seed * 1_000 + i, device=dev,
                                progress=progress)
        chance = math.log(min(len(train_idx), 256))
        say(f"text: token pooling aligned with the images in {steps} steps (contrastive loss {loss:.3f}; chance {chance:.2f})")
