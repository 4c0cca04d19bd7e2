"""The Python API: load a run or a bundled model, generate images, train. The CLI and server call this.

Loading imports no training code: `train` imports the loop when it is called."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image

from . import __version__
from .condition import NO_LABEL, Cond
from .device import pick_device
from .images import make_grid, read_settings, save_png, to_pil
from .models.common import check_seeds
from .models.optim import with_cooldown_end
from .models.options import OptionSpec
from .runs.config import RunConfig, build_model
from .runs.checkpoint import check_shapes, load_state, state_shapes
from .runs.store import DEFAULT_MODEL, BUNDLED_MODELS_DIR, default_runs_dir, load_weights, resolve_run, weights_file, weights_hash, weights_shapes
from .provenance.moderation import DEFAULT as DEFAULT_POLICY, ModerationPolicy, resolve_policy
from .provenance.moderation import ModerationRefused  # noqa: F401  (re-exported: what generate raises for a refused prompt)
from .provenance.marks import MarkSettings, is_marked, mark_image
from .provenance.outputs import OutputSigner
from .post import PostSettings, apply_post, as_post_settings
from .replay import model_dir, regenerate  # noqa: F401  (regenerate: re-exported, `sample --from`)

if TYPE_CHECKING:  # the loop is imported by train() alone, so loading a model stays free of it
    from .train.loop import TrainResult


def run_name(run_dir: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> str:
    """The name a model goes by everywhere (CLI, API, server, PNG settings): the plain folder name for a
    bundled model or a run directly under the runs directory (runs_dir, else $PIXELFORGE_RUNS or ./runs),
    so that `resolve_run` finds it again from any working directory; the folder path otherwise."""
    run_dir = Path(run_dir)
    parent = run_dir.resolve().parent
    runs = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if parent == BUNDLED_MODELS_DIR or parent == runs.resolve():
        return run_dir.name
    return str(run_dir)


def run_option_specs(run_dir: Path, family_specs) -> dict[str, OptionSpec]:
    """name -> declaration of each sampling option of a family, with the defaults of the run's
    sample_defaults.json where it has one, checked against the declared ranges; needs no model, so
    `pixelforge info` shows them without building one."""
    specs = {s.name: s for s in family_specs}
    path = run_dir / "sample_defaults.json"
    if path.exists():
        try:
            own = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(own, dict):
            raise ValueError(f"{path}: must be an object of sampling options, got {type(own).__name__}")
        unknown = sorted(set(own) - set(specs))
        if unknown:
            raise ValueError(f"{path}: unknown sampling option(s) {', '.join(unknown)}; valid: {', '.join(specs)}")
        try:
            specs.update({k: dataclasses.replace(specs[k], default=v) for k, v in own.items()})
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return specs


def run_sample_options(run_dir: Path, family_specs) -> dict:
    """The run's sampling options and their defaults (see run_option_specs)."""
    return {name: spec.default for name, spec in run_option_specs(run_dir, family_specs).items()}


def read_class_names(path: Path) -> list[str]:
    """classes.json: a list of class names, or a ValueError naming the file."""
    try:
        names = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: must be a list of class names (strings)")
    return names


class Generator:
    """A trained model ready to sample: `g.generate(n=8, label=3, seed=0)` -> list of PIL images."""

    def __init__(self, run_dir: Path, *, device: str = "auto", name: str | None = None,
                 runs_dir: str | os.PathLike | None = None, moderation: str | os.PathLike | ModerationPolicy | None = DEFAULT_POLICY):
        self.run_dir = Path(run_dir)
        # The prompt moderation policy (provenance/moderation.py): "default" ($PIXELFORGE_MODERATION_POLICY,
        # else the shipped file), a policy file, a ModerationPolicy, or None for none. Read before the model.
        self.moderation = resolve_policy(moderation)
        self.config = RunConfig.load(self.run_dir / "config.json")
        self.device = pick_device(device)
        self.model = build_model(self.config, self.device, where=str(self.run_dir / "config.json"))
        if self.config.compress is not None:  # a compressed variant: its network call is replaced (compress/)
            from .compress.load import load_compressed

            load_compressed(self.model, self.run_dir, self.config.compress)
        else:
            weights = weights_file(self.run_dir)
            check_shapes(weights_shapes(self.run_dir), state_shapes(self.model), weights)  # the header alone, before reading
            load_state(self.model, load_weights(self.run_dir), weights)
        self.model.eval().requires_grad_(False)
        self.checkpoint_hash = weights_hash(self.run_dir)
        self.name = name or run_name(self.run_dir, runs_dir)
        meta_path = self.run_dir / "classes.json"
        self.class_names: list[str] = []
        if meta_path.exists():
            self.class_names = read_class_names(meta_path)

    @property
    def num_classes(self) -> int:
        return getattr(self.model.config, "num_classes", 0)

    def __repr__(self) -> str:
        return f"Generator({self.name!r}, family={self.config.family}, classes={self.num_classes}, device={self.device})"

    @property
    def inputs(self) -> tuple[str, ...]:
        """The conditions this model takes: its family's `inputs`, labels only with num_classes > 0, text
        only with a text encoder (see FamilyModule.takes)."""
        return self.model.takes()

    def check_inputs(self, given) -> None:
        """A clear error if a condition is given (names of Cond fields) that this model does not take."""
        unknown = ", ".join(f for f in given if f not in self.inputs)
        if unknown and not self.inputs:
            raise ValueError(f"{self.name} is unconditional: it takes no {unknown}")
        if unknown:
            raise ValueError(f"{self.name} takes no {unknown}; the conditions it takes: {', '.join(self.inputs)}")

    def _label_index(self, label) -> int | None:
        if label is None:
            return None
        self.check_inputs(["labels"])
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.class_names:
                raise ValueError(f"unknown label {label!r}; valid labels: {', '.join(self.class_names) or '0..' + str(self.num_classes - 1)}")
            return self.class_names.index(label)
        idx = int(label)
        if not 0 <= idx < self.num_classes:
            raise ValueError(f"label {idx} out of range; valid labels are 0..{self.num_classes - 1}")
        return idx

    @property
    def option_specs(self) -> dict[str, OptionSpec]:
        """name -> declaration (kind, range, help) of each option this model's sample() takes: the
        family's `option_specs`, with defaults from the run's sample_defaults.json where it has one (a
        model whose samples are best with guidance 2, say), checked against the same ranges."""
        return run_option_specs(self.run_dir, getattr(self.model, "option_specs", ()))

    @property
    def sample_options(self) -> dict:
        """The options this model's sample() takes (e.g. sampler, steps, guidance) and their defaults
        (see option_specs)."""
        return {name: spec.default for name, spec in self.option_specs.items()}

    def resolve_options(self, **options) -> dict:
        """The sampling options a call will use: its own over the defaults, each checked against the
        family's declaration (type, finite, range or choices); unknown names are an error."""
        specs = self.option_specs
        unknown = sorted(set(options) - set(specs))
        if unknown:
            raise ValueError(f"{self.config.family} models take no option {', '.join(unknown)}; "
                             f"valid options: {', '.join(specs) or 'none'}")
        given = {k: specs[k].check(v) for k, v in options.items() if v is not None}
        return {**self.sample_options, **given}

    def generate_tensor(
        self,
        n: int = 8,
        *,
        label=None,
        labels: list | None = None,
        prompt: str | None = None,
        prompts: list | None = None,
        negative_prompt: str | None = None,
        sketch=None,
        audio=None,
        seed: int = 0,
        seeds: list[int] | None = None,
        batch_size: int = 64,
        callback=None,
        _drawings: list | None = None,
        _clips: list | None = None,
        _rows: int | None = None,
        **options,
    ) -> tuple[torch.Tensor, list[dict]]:
        """Images (n, C, H, W) in [-1, 1] and each image's settings (enough to regenerate it alone).

        label: one label for all images (class index or name); labels: one per image.
        prompt: one text prompt for all images (text-conditioned models); prompts: one per image (None:
        no prompt). negative_prompt: what guidance (guidance > 1) steers away from, instead of nothing.
        Every prompt and the negative prompt pass the moderation policy first (a ModerationRefused naming
        the field and the rule, before any compute).
        sketch: a drawing (file path or PIL image; dark strokes on white, any size) for all images, or a list
        of n, for models trained with an edge-map condition; each is made the model's edge representation
        (condition.edges.normalise_sketch; a warning when resized) and its SHA-256 is in the settings
        (_drawings, a list, receives each image's drawing as read, for generate() to keep with the image).
        audio: a WAV clip (a path or its bytes) for all images, or a list of n, for models trained with
        --condition audio; resampled to the encoder's rate (a warning naming both rates), embedded by the
        model's audio encoder, and its SHA-256 recorded in the settings (_clips receives each image's clip bytes).
        options: the family's sampling options (see `sample_options`; for diffusion sampler, steps,
        guidance, schedule); unset ones take their defaults.
        Image i uses seed + i (or seeds[i]), so it does not depend on n or batch_size (up to float rounding: see
        replay_rows; its settings record the size of the batch it was made in, under "batch").
        _rows: regenerate()'s replay of one image in a batch of that size (replay_rows).
        """
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        opts = self.resolve_options(**options)
        seeds = check_seeds(n, seed, seeds)
        idx, prompts = self._per_image(n, label, labels, prompt, prompts, negative_prompt)
        spatial, sketches = self._sketches(n, sketch)
        heard, clips = self._audio(n, audio)
        text, negative = self._encode_prompts(prompts, negative_prompt)
        out = []
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            chunk_idx = idx[sl]
            cond, extra = self._batch_cond(sl, idx, prompts, text, negative, spatial, heard)

            def cb(i, total, *_, _start=start, _m=len(chunk_idx)):
                if callback is not None:
                    callback(_start + _m * (i + 1) / total, n)

            chunk_seeds, cond, extra, _ = replay_rows(_rows, seeds[sl], cond, extra)
            out.append(self.model.sample(len(chunk_seeds), cond, seeds=chunk_seeds, callback=cb, **opts,
                                         **extra)[:len(chunk_idx)].cpu())
        settings = self._settings(seeds, opts, idx, prompts if text is not None else None, negative_prompt,
                                  batches=batch_sizes(n, batch_size, _rows))
        for s, (drawing, digest) in zip(settings, sketches or []):
            s.update(sketch=sketch_file_name(digest), sketch_sha256=digest)
            if _drawings is not None:
                _drawings.append(drawing)
        for s, (clip, digest) in zip(settings, clips or []):
            s.update(audio=audio_file_name(digest), audio_sha256=digest)
            if _clips is not None:
                _clips.append(clip)
        return torch.cat(out), settings

    def _audio(self, n: int, audio) -> tuple[torch.Tensor | None, list[tuple[bytes, str]] | None]:
        """Each image's Cond.audio (n, D) from one WAV clip (a path or its bytes) for all or a list of n (each
        distinct clip read and embedded once), and each image's (clip bytes, SHA-256); (None, None) without.
        A clear error for a model that takes no audio."""
        if audio is None:
            return None, None
        self.check_audio()
        from .condition.audio import prepare_clip

        items = list(audio) if isinstance(audio, (list, tuple)) else [audio] * n
        if len(items) != n:
            raise ValueError(f"{len(items)} audio clips given for {n} images")
        done: dict = {}  # a path or the bytes -> (embedding (D,), bytes, SHA-256)
        rows, clips = [], []
        for item in items:
            key = item if isinstance(item, (str, os.PathLike, bytes)) else id(item)
            if key not in done:
                data = item if isinstance(item, bytes) else None
                if data is None and isinstance(item, (str, os.PathLike)) and Path(item).is_file():
                    data = Path(item).read_bytes()
                wave, digest = prepare_clip(data if data is not None else item, self.model.config.audio_net,
                                            None if isinstance(item, bytes) else f"audio {item}")
                done[key] = (self.model.encode_audio(wave[None])[0].cpu(), data, digest)
            embedding, data, digest = done[key]
            rows.append(embedding)
            clips.append((data, digest))
        return torch.stack(rows), clips

    def check_audio(self) -> None:
        """A clear error unless this model takes audio (a spoken-clip condition)."""
        if "audio" not in self.inputs:
            takes = ", ".join(self.inputs) or "nothing (it is unconditional)"
            raise ValueError(f"{self.name} takes no audio (it was not trained with --condition audio); "
                             f"the conditions it takes: {takes}")

    def _sketches(self, n: int, sketch) -> tuple[torch.Tensor | None, list[tuple[Image.Image, str]] | None]:
        """Each image's edge map (n, 1, H, W) in {0, 1} from one sketch for all or a list of n (each distinct
        drawing normalised once), and each image's (drawing in mode "L", its SHA-256); (None, None) without.
        A clear error for a model that takes no sketch."""
        if sketch is None:
            return None, None
        self.check_sketch()
        from .condition.edges import drawing_lines, lines_to_edges, read_sketch

        items = list(sketch) if isinstance(sketch, (list, tuple)) else [sketch] * n
        if len(items) != n:
            raise ValueError(f"{len(items)} sketches given for {n} images")
        cfg = self.model.config
        done: dict = {}  # a path, or a PIL image's id -> (edge map, drawing, SHA-256)
        maps, drawn = [], []
        for item in items:
            key = item if isinstance(item, (str, os.PathLike)) else id(item)
            if key not in done:
                im, digest, what = read_sketch(item)
                edges = lines_to_edges(drawing_lines(im, cfg.image_size, what), cfg.edge_detector, cfg.sketch_stroke_width)
                done[key] = (torch.from_numpy(edges).to(torch.float32)[None], im, digest)  # (1, H, W)
            edge_map, im, digest = done[key]
            maps.append(edge_map)
            drawn.append((im, digest))
        return torch.stack(maps), drawn

    def check_edit(self) -> None:
        """A clear error unless this model's family declares the "edit" capability (img2img, inpainting)."""
        capabilities = getattr(self.model, "capabilities", ())
        if "upscale" in capabilities:
            raise ValueError(f"{self.name} is an upscaler: it cannot edit images (`pixelforge upscale` enlarges them)")
        if "edit" not in capabilities:
            raise ValueError(f"{self.config.family} models cannot edit images")

    def check_sketch(self) -> None:
        """A clear error unless this model takes a sketch (an edge-map condition)."""
        if "spatial" not in self.inputs or getattr(self.model.config, "lowres", None) is not None:  # an upscaler's is its input
            takes = ", ".join(self.inputs) or "nothing (it is unconditional)"
            raise ValueError(f"{self.name} takes no sketch (it was not trained with --condition edges); "
                             f"the conditions it takes: {takes}")

    def _per_image(self, n: int, label, labels: list | None, prompt: str | None,
                   prompts: list | None, negative_prompt: str | None = None) -> tuple[list, list]:
        """Each image's label index (None: no label) and prompt (None: none), from one for all or a list;
        the prompts and the negative prompt are checked and pass the moderation policy first."""
        if labels is None:
            labels = [label] * n
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels given for {n} images")
        idx = [self._label_index(lb) for lb in labels]
        per_image = prompts is not None
        if prompts is None:
            prompts = [prompt] * n
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts given for {n} images")
        if self.check_prompts(prompts, negative_prompt):
            self.moderate(prompts, negative_prompt, per_image=per_image)
        return idx, prompts

    def _batch_cond(self, sl: slice, idx: list, prompts: list, text, negative,
                    spatial: torch.Tensor | None = None, audio: torch.Tensor | None = None) -> tuple[Cond | None, dict]:
        """The Cond of the images in slice sl (labels idx, None: no label; prompts with their encoded
        TextEmbeddings text, or None; edge maps spatial (n, 1, H, W), or None) and the keyword arguments for
        the negative prompt's Cond, if any: it keeps the sketch, so guidance steers by the prompts alone."""
        chunk_idx = idx[sl]
        fields = {}
        if spatial is not None:
            fields["spatial"] = spatial[sl]
        if audio is not None:
            fields["audio"] = audio[sl]  # (m, D) the clips' embeddings
        if self.num_classes:
            fields["labels"] = torch.tensor([NO_LABEL if i is None else i for i in chunk_idx])
        if text is not None:
            fields.update(text=text.pooled[sl], text_tokens=text.tokens[sl], text_mask=text.mask[sl],
                          present=torch.tensor([p is not None for p in prompts[sl]]))
        cond = Cond(**fields) if fields else None
        extra = {}
        if negative is not None:  # the empty condition with the negative prompt in place of no prompt
            m = len(chunk_idx)
            extra["negative"] = dataclasses.replace(
                cond.empty(), text=negative.pooled.expand(m, -1), text_tokens=negative.tokens.expand(m, -1, -1),
                text_mask=negative.mask.expand(m, -1), present=torch.ones(m, dtype=torch.bool),
                **({"spatial": cond.spatial} if cond.spatial is not None else {}))
        return cond, extra

    def _settings(self, seeds: list[int], opts: dict, idx: list, prompts: list | None,
                  negative_prompt: str | None, *, batches: list[int]) -> list[dict]:
        """Each image's settings: the model, its checkpoint, the seed, the options, the conditions (prompts None: a
        model without text, which records no prompt) and the size of the batch it was sampled in (batches[i])."""
        settings = []
        for i, seed in enumerate(seeds):
            s = {
                "model": self.name,
                "model_path": str(self.run_dir.resolve()),  # a hint where the name does not resolve
                "family": self.config.family,
                "checkpoint": self.checkpoint_hash,
                "seed": seed,
                **opts,
                "label": idx[i],
                "batch": batches[i],
                "version": __version__,
            }
            if self.config.compress is not None:
                s["variant"] = self.config.compress.variant  # fp32 eager unless recorded
            distilled = getattr(self.model.config, "distill", None)
            if distilled is not None:  # a few-step student (models/distill.py): of which teacher, how, at what guidance
                s["distilled"] = {"teacher": distilled.teacher, "teacher_sha256": distilled.teacher_sha256,
                                  "method": distilled.method, "steps_out": distilled.steps_out,
                                  "guidance": distilled.guidance}
            if prompts is not None:
                s["prompt"] = prompts[i]
                s["negative_prompt"] = negative_prompt
            if idx[i] is not None and self.class_names:
                s["class_name"] = self.class_names[idx[i]]
            settings.append(s)
        return settings

    def edit_tensor(
        self,
        images,
        *,
        mask=None,
        label=None,
        labels: list | None = None,
        prompt: str | None = None,
        prompts: list | None = None,
        negative_prompt: str | None = None,
        seed: int = 0,
        seeds: list[int] | None = None,
        batch_size: int = 64,
        callback=None,
        _copies: list | None = None,
        _rows: int | None = None,
        **options,
    ) -> tuple[torch.Tensor, list[dict]]:
        """Edited images (n, C, H, W) in [-1, 1] and each one's settings; arguments as edit() (_copies, a list,
        receives each image's {"image": input as read, "mask": mask as read or None}, for edit() to keep; _rows as
        generate_tensor's)."""
        self.check_edit()
        from .edit import copy_file_name, image_tensor, mask_tensor, read_input

        # the family's edit options (strength, resample) apart from its sampling options, each checked
        edit_specs = {spec.name: spec for spec in self.model.edit_option_specs}
        edit_opts = {k: spec.default if options.get(k) is None else spec.check(options[k])
                     for k, spec in edit_specs.items()}
        opts = self.resolve_options(**{k: v for k, v in options.items() if k not in edit_specs})
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        n = len(items)
        if n < 1:
            raise ValueError("no image to edit")
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask] * n
        if len(masks) != n:
            raise ValueError(f"{len(masks)} masks given for {n} images")
        if len({mm is None for mm in masks}) > 1:
            raise ValueError("give a mask for every image or for none")
        seeds = check_seeds(n, seed, seeds)
        idx, prompts = self._per_image(n, label, labels, prompt, prompts, negative_prompt)
        cfg = self.model.config
        done: dict = {}  # an input given for several images is read once: (kind, path or id) -> (tensor, image, SHA-256)

        def fitted(item, kind: str) -> tuple[torch.Tensor, Image.Image, str]:
            key = (kind, item if isinstance(item, (str, os.PathLike)) else id(item))
            if key not in done:
                im, digest, what = read_input(item, kind)
                fit = (image_tensor(im, cfg.image_size, cfg.channels, what) if kind == "image"
                       else mask_tensor(im, cfg.image_size, what))
                done[key] = (fit, im, digest)
            return done[key]

        x, m, image_hashes, mask_hashes, copies = [], [], [], [], []
        for item, mask_item in zip(items, masks):
            image, image_im, digest = fitted(item, "image")
            x.append(image)
            image_hashes.append(digest)
            mask_im = None
            if mask_item is not None:
                mask_t, mask_im, digest = fitted(mask_item, "mask")
                m.append(mask_t)
            mask_hashes.append(digest if mask_item is not None else None)
            copies.append({"image": image_im, "mask": mask_im})
        x_all = torch.stack(x)  # (n, C, H, W) in [-1, 1]
        m_all = torch.stack(m) if m else None  # (n, 1, H, W), 1: repaint
        text, negative = self._encode_prompts(prompts, negative_prompt)
        out = []
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            cond, extra = self._batch_cond(sl, idx, prompts, text, negative)
            k = len(seeds[sl])

            def cb(i, total, *_, _start=start, _m=k):
                if callback is not None:
                    callback(_start + _m * (i + 1) / total, n)

            chunk_seeds, cond, extra, (chunk_x, chunk_mask) = replay_rows(
                _rows, seeds[sl], cond, extra, x_all[sl], m_all[sl] if m_all is not None else None)
            out.append(self.model.edit(chunk_x, chunk_mask, cond=cond, seeds=chunk_seeds, callback=cb,
                                       **edit_opts, **opts, **extra)[:k].cpu())
        settings = self._settings(seeds, opts, idx, prompts if text is not None else None, negative_prompt,
                                  batches=batch_sizes(n, batch_size, _rows))
        for s, image_hash, mask_hash in zip(settings, image_hashes, mask_hashes):
            # each input's lossless copy is named by its hash, so `sample --from` finds it beside the image
            s.update(edit_opts, image=copy_file_name("image", image_hash), image_sha256=image_hash,
                     mask=None if mask_hash is None else copy_file_name("mask", mask_hash), mask_sha256=mask_hash)
            if mask_hash is None:
                s.pop("resample", None)  # only inpainting resamples
        if _copies is not None:
            _copies.extend(copies)
        return torch.cat(out), settings

    def edit(self, images, *, strength: float | None = None, mask=None, seed: int = 0, watermark: bool | MarkSettings = True,
             post: PostSettings | dict | None = None, **kwargs) -> list[Image.Image]:
        """Edit images with the model (img2img and inpainting, for families with the "edit" capability;
        others refuse with "FAMILY models cannot edit images").

        images: a file path, an image file's bytes (an upload) or a PIL image, or a list of them; each is converted
        to the model's channels and, when of another size, resized (Lanczos) with a warning (once for an input
        given for several images, which is read once). Files are checked as data folders are: a
        zero-byte, truncated or unreadable file, or a decompression bomb, is a ValueError naming it.
        strength: 0 returns the input, 1 draws a new image (see the family's edit()); None: the family's
        declared default (its edit option "strength").
        mask: None, one mask for every image, or one per image: white (>= 50 %) marks what is repainted,
        black what is kept; resized with nearest neighbour. Image i uses seed + i (or seeds[i]).
        kwargs: label/labels, prompt/prompts, negative_prompt, seeds, batch_size, callback as generate();
        resample (inpainting: RePaint passes per step) and the family's sampling options.
        Each image's settings (in `.info["pixelforge"]`) record the options, strength, and the SHA-256 (of the
        decoded pixels) of the input image and of the mask (None without one) with the names of their lossless
        copies ("image", "mask"), which `.info["pixelforge_image"]` and `.info["pixelforge_mask"]` hold and
        save_images writes beside the image, so `sample --from` replays the edit.
        watermark, post: as generate().
        """
        from .edit import INFO_KEYS

        post = as_post_settings(post)
        copies: list[dict] = []
        tensors, settings = self.edit_tensor(images, mask=mask, seed=seed, strength=strength, _copies=copies, **kwargs)
        pils = _with_settings(to_pil(tensors), settings, watermark, post)
        for im, kept in zip(pils, copies):
            for kind, source in kept.items():
                if source is not None:
                    im.info[INFO_KEYS[kind]] = source
        return pils

    def check_upscaler(self) -> None:
        """A clear error unless this model is an upscaler (a super-resolution run: --model upscale)."""
        if "upscale" not in getattr(self.model, "capabilities", ()):
            raise ValueError(f"{self.name} is not an upscaler (a {self.config.family} model not trained with --model "
                             "upscale): train one with `pixelforge train DATA --model upscale --scale 2`")

    def upscale_tensor(self, images, *, seed: int = 0, seeds: list[int] | None = None, batch_size: int = 64,
                       callback=None, _inputs: list | None = None, _rows: int | None = None,
                       **options) -> tuple[torch.Tensor, list[dict]]:
        """Upscaled images (n, C, H, W) in [-1, 1] and each one's settings; arguments as upscale() (_inputs, a
        list, receives each input as read, for upscale() to keep with its image; _rows as generate_tensor's)."""
        self.check_upscaler()
        from .condition.lowres import upsample
        from .upscale import input_file_name, lowres_tensor, read_lowres

        opts = self.resolve_options(**options)
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("no image to upscale")
        seeds = check_seeds(len(items), seed, seeds)
        cfg = self.model.config
        side = cfg.image_size // cfg.lowres.scale
        done: dict = {}  # an input given for several images is read once: path or id -> (tensor, image, SHA-256)
        for item in items:
            key = item if isinstance(item, (str, os.PathLike)) else id(item)
            if key not in done:
                im, digest, what = read_lowres(item, cfg.channels)
                done[key] = (lowres_tensor(im, side, cfg.channels, what), im, digest)
        read = [done[item if isinstance(item, (str, os.PathLike)) else id(item)] for item in items]
        low = torch.stack([t for t, _, _ in read])  # (n, C, side, side) in [-1, 1]
        spatial = upsample(low, cfg.image_size, cfg.lowres)  # (n, C, H, W): the condition, as in training
        out = []
        for start in range(0, len(items), batch_size):
            sl = slice(start, start + batch_size)
            k = len(seeds[sl])

            def cb(i, total, *_, _start=start, _m=k):
                if callback is not None:
                    callback(_start + _m * (i + 1) / total, len(items))

            chunk_seeds, cond, _, _ = replay_rows(_rows, seeds[sl], Cond(spatial=spatial[sl]), {})
            out.append(self.model.sample(len(chunk_seeds), cond, seeds=chunk_seeds, callback=cb, **opts)[:k].cpu())
        settings = self._settings(seeds, opts, [None] * len(items), None, None,
                                  batches=batch_sizes(len(items), batch_size, _rows))
        for s, (_, im, digest) in zip(settings, read):
            s.pop("label", None)
            s.update(scale=cfg.lowres.scale, input=input_file_name(digest), input_sha256=digest)
            if _inputs is not None:
                _inputs.append(im)
        return torch.cat(out), settings

    def upscale(self, images, *, seed: int = 0, watermark: bool | MarkSettings = True,
                post: PostSettings | dict | None = None, **kwargs) -> list[Image.Image]:
        """Upscale images with this super-resolution model (an upscaler run; others refuse with a clear error).

        images: a file path, an image file's bytes or a PIL image, or a list of them; each converted to the model's
        channels and, when not of its input size (image_size / scale), resized (Lanczos) with a warning naming both
        sizes. Image i uses seed + i (or seeds[i]) and nothing else: the same seed gives the same pixels.
        kwargs: seeds, batch_size, callback, and the sampling options (sampler, steps, ...).
        Each image's settings (`.info["pixelforge"]`) record the options, the scale and the input's SHA-256 (of its
        decoded pixels) and the name of its copy, which `.info["pixelforge_input"]` holds and save_images writes
        beside the image, so `sample --from` regenerates it. watermark, post: as generate()."""
        post = as_post_settings(post)
        inputs: list[Image.Image] = []
        tensors, settings = self.upscale_tensor(images, seed=seed, _inputs=inputs, **kwargs)
        pils = _with_settings(to_pil(tensors), settings, watermark, post)
        from .upscale import INPUT_INFO_KEY

        for im, low in zip(pils, inputs):
            im.info[INPUT_INFO_KEY] = low
        return pils

    def check_prompts(self, prompts: list, negative_prompt: str | None = None) -> bool:
        """Whether any prompt is given (prompts: one entry per image, None for none); a clear error where
        this model takes no text, a prompt is not a string, or a negative prompt comes without guidance."""
        given = [p for p in prompts if p is not None]
        if not given and negative_prompt is None:
            return False
        self.check_inputs(["text"])
        for p in [*given, negative_prompt]:
            if p is not None and not isinstance(p, str):
                raise ValueError(f"a prompt must be text, got {type(p).__name__}")
        if negative_prompt is not None and "guidance" not in getattr(self.model, "capabilities", ()):
            raise ValueError(f"{self.name} has no classifier-free guidance, which a negative prompt needs")
        return True

    def moderate(self, prompts: list, negative_prompt: str | None = None, *, per_image: bool = True) -> None:
        """Check every prompt (one entry per image, None for none) and the negative prompt against this
        Generator's moderation policy; a ModerationRefused (a ValueError) naming the field ("prompts[i]" where
        per_image, else "prompt"; "negative_prompt") and the rule for the first refused one."""
        if self.moderation is None:
            return
        items = [("prompts" if per_image else "prompt", i if per_image else None, p)
                 for i, p in enumerate(prompts) if isinstance(p, str)]
        if isinstance(negative_prompt, str):
            items.append(("negative_prompt", None, negative_prompt))
        self.moderation.enforce(items)

    def _encode_prompts(self, prompts: list, negative_prompt: str | None):
        """The prompts' TextEmbeddings (None entries encoded as "" and marked absent by the caller) and the
        negative prompt's (1 row), or None for each where not given; a clear error for a model without text."""
        if not self.check_prompts(prompts, negative_prompt):
            return None, None
        from .condition.text import load_text_encoder

        cfg = self.model.config
        encoder = load_text_encoder(cfg.text_encoder, max_tokens=cfg.text_tokens)
        text = encoder.encode([p or "" for p in prompts]).to(self.device)
        negative = encoder.encode([negative_prompt]).to(self.device) if negative_prompt is not None else None
        return text, negative

    def generate(self, n: int = 8, *, watermark: bool | MarkSettings = True, post: PostSettings | dict | None = None,
                 **kwargs) -> list[Image.Image]:
        """n PIL images; keyword arguments as generate_tensor. Each image's settings are in
        `.info["pixelforge"]`, and `image.save("x.png")` writes them into the PNG (read_settings reads them).
        An image drawn from a sketch also carries the drawing (`.info["pixelforge_sketch"]`), which
        save_images writes beside it.
        watermark: the invisible watermark (on by default; False: off; a MarkSettings for a user key or another
        strength); each image's settings record under "watermark" whether and what was embedded.
        post: post-processing (pixelforge.post: denoise, color, sharpen, upscale), a PostSettings or a dict of its
        fields; applied before the watermark is embedded and recorded in each image's settings under "post"."""

        post = as_post_settings(post)  # a bad option fails before any compute
        drawings: list[Image.Image] = []
        clips: list[bytes] = []
        images, settings = self.generate_tensor(n, _drawings=drawings, _clips=clips, **kwargs)
        pils = _with_settings(to_pil(images), settings, watermark, post)
        for im, drawing in zip(pils, drawings):
            im.info[SKETCH_INFO_KEY] = drawing
        for im, clip in zip(pils, clips):
            im.info[AUDIO_INFO_KEY] = clip
        return pils


SKETCH_INFO_KEY = "pixelforge_sketch"  # an output image's .info entry holding the drawing it was made from


AUDIO_INFO_KEY = "pixelforge_audio"  # an output image's .info entry holding the WAV bytes it was made from


def batch_sizes(n: int, batch_size: int, rows: int | None = None) -> list[int]:
    """The size of the batch each of n images is sampled in, batch_size at a time (the last batch holds the rest);
    a replay's (rows given) is the size recorded, the one it is computed in (replay_rows)."""
    if rows is not None:
        return [rows] * n
    return [min(batch_size, n - i // batch_size * batch_size) for i in range(n)]


def replay_rows(rows: int | None, seeds: list[int], cond: Cond | None, extra: dict,
                *tensors: torch.Tensor | None) -> tuple[list[int], Cond | None, dict, tuple]:
    """One image's inputs (its seed, Cond, the negative prompt's Cond in extra, and per-image tensors) repeated to
    `rows` identical rows, for regenerate() to compute it in a batch of the size it was first sampled in, then keep
    the first row. Every row depends only on its own inputs, but not every kernel rounds alike for every batch
    size: on a 2-core AMD EPYC with AVX2 and no AVX-512 (torch 2.13 CPU), an image sampled alone differed from the
    same seed in a batch of two by up to 4e-5, a grey level in a few pixels, where batches of 2, 3, 4 and 64 agreed
    to the bit (GPUs choose kernels by batch size too). rows None or 1, or more than one image: as given."""
    if rows is None or rows <= 1 or len(seeds) != 1:
        return seeds, cond, extra, tensors

    def widen(c):
        return Cond.cat([c] * rows) if isinstance(c, Cond) else c

    repeated = tuple(None if t is None else t.repeat(rows, *[1] * (t.dim() - 1)) for t in tensors)
    return seeds * rows, widen(cond), {k: widen(v) for k, v in extra.items()}, repeated


def audio_file_name(digest: str) -> str:
    """The name of a clip's copy beside the images drawn from it: audio-<first 16 hex of its SHA-256>.wav."""
    return f"audio-{digest[:16]}.wav"


def sketch_file_name(digest: str) -> str:
    """The name of a sketch's copy beside the images drawn from it: sketch-<first 16 hex of its SHA-256>.png."""
    return f"sketch-{digest[:16]}.png"


def _with_settings(pils: list[Image.Image], settings: list[dict], watermark: bool | MarkSettings,
                   post: PostSettings | None = None) -> list[Image.Image]:
    """The images, post-processed where asked (its record in each image's settings under "post"), then marked
    (provenance.marks.mark_image), each carrying its settings in `.info["pixelforge"]` and in what save() writes.
    Post-processing comes first so that the watermark is embedded into the final pixels: a denoiser or an
    upscaler run after it would weaken or resample the mark (docs/post.md)."""
    if post is not None:
        pils = apply_post(pils, post, post_upscaler(post))
        record = post.to_record()
        settings = [{**s, "post": record} for s in settings]
    return [mark_image(im, settings=s, marks=watermark) for im, s in zip(pils, settings)]


def post_upscaler(post: PostSettings | None, *, device: str = "auto"):
    """The super-resolution model post.upscaler names, loaded as post-processing's upscaler (upscale.model_upscaler),
    after checking that it is an upscaler of factor post.upscale; None where post names none (Lanczos)."""
    if post is None or post.upscaler is None:
        return None
    from .upscale import model_upscaler

    g = load(post.upscaler, device=device)
    g.check_upscaler()
    if g.model.config.lowres.scale != post.upscale:
        raise ValueError(f"upscaler {post.upscaler} enlarges {g.model.config.lowres.scale}x, but upscale asks "
                         f"{post.upscale}x: ask upscale {g.model.config.lowres.scale}, or leave the upscaler out for Lanczos")
    return model_upscaler(g)


def load(name_or_path: str | os.PathLike = DEFAULT_MODEL, *, device: str = "auto", runs_dir: str | os.PathLike | None = None,
         moderation: str | os.PathLike | ModerationPolicy | None = DEFAULT_POLICY) -> Generator:
    """A run folder, a run name under the runs directory, or a bundled model name -> Generator.
    moderation: the prompt moderation policy (see Generator; None: no moderation)."""
    return Generator(resolve_run(name_or_path, runs_dir), device=device, runs_dir=runs_dir, moderation=moderation)


# The sampler settings of in-training evaluation (FID/KID every eval_every steps): fast rather than best,
# the same at every evaluation so figures over training compare. Families without these options ignore them.
TRAINING_EVAL_SAMPLE_OPTIONS = {"sampler": "dpmpp_2m", "steps": 12}


def train(
    data: str | os.PathLike,
    *,
    name: str,
    runs_dir: str | os.PathLike | None = None,
    device: str = "auto",
    init_from: str | None = None,
    max_minutes: float | None = None,
    minutes: float | None = None,
    progress: bool = True,
    adapter: str | None = None,
    compile: bool = False,
    workers: int = 0,
    **settings,
) -> TrainResult:
    """Train a model on `data` (a folder of images or a bundled data set name) in RUNS_DIR/NAME, or resume
    the run of that name; returns the loop's TrainResult (run_dir, step, stopped, losses, last_checkpoint).

    settings: the new run's, as `pixelforge.runs.new_run_config` takes them: model (the family, default
    "diffusion"), steps, batch_size, lr (default: the family's), image_size, text, ..., and model_fields, a
    dict of the family's model config fields ({"base_channels": 16, "channel_mult": (1, 2)}); unset ones
    take the library's defaults. A run of that name that has checkpoints resumes with its saved config:
    of the settings only `steps` then applies (a new total). runs_dir: default $PIXELFORGE_RUNS or ./runs. init_from: a run or
    bundled model whose matching weights a new run starts from, or "none" (from scratch; the default of a run
    of steps; a run with `minutes` starts from a bundled base model that fits it, train/budget.py). max_minutes: a wall-clock budget for this
    call (it checkpoints and stops; call again to continue). The run's in-training FID/KID (eval_every > 0)
    sample with TRAINING_EVAL_SAMPLE_OPTIONS.

    minutes: a time budget for the whole run instead of `steps` (a diffusion run; train/budget.py): a new
    run's network size, batch, warm-up, EMA decay and cadence are planned from a few timed steps on this
    device (settings given win), and it trains until its training time reaches the budget, over as many
    calls as it takes. Resuming, a run keeps its budget; minutes (or steps) given then is a new total. A new
    budget run trains in bf16 where a step is measured faster in it (settings' precision wins) and starts
    from the bundled base model that fits it unless init_from says otherwise.

    adapter: "edges" trains a ControlNet-style adapter on top of `data`, then a diffusion run (a run name under
    runs_dir, a folder or a bundled model) whose network stays frozen; settings as
    runs.adapter.new_adapter_run_config takes them (adapter_data: other training images than the base's;
    minutes: a time budget, unplanned). docs/conditions.md, "Adapters".

    compile: the networks compiled by torch.compile for this call's training (tried first; eager, with a
    warning, where it fails). workers: background threads preparing the coming steps' batches (same batches
    for any number). Neither changes the run's config (docs/distributed.md).
    """
    from tqdm.auto import tqdm

    from .distributed import launched_world
    from .runs import check_run_name, new_run_config
    from .train.budget import NO_INIT
    from .train.loop import train as train_loop

    runs = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    run_dir = runs / check_run_name(name)
    saved = run_dir / "config.json"
    steps = settings.get("steps")
    if minutes is not None:
        from .train.budget import check_not_steps

        check_not_steps(steps)
    if adapter is not None and init_from is not None:
        raise ValueError("init_from (--init-from) does not apply to an adapter run: it starts from its base's weights")
    if saved.exists() and (run_dir / "checkpoints").is_dir():
        cfg = RunConfig.load(saved)
        if adapter is not None and getattr(cfg.model_config(), "adapter", None) is None:
            raise ValueError(f"{run_dir} holds a run that is not an adapter: choose another --name for the adapter run")
        # a new total moves a cool-down's end with it (a budget's in proportion to the minutes; a run of steps
        # given minutes keeps its own, having no expected steps)
        if minutes is not None and minutes != cfg.train.minutes:  # a new total budget
            end = cfg.optim.cooldown_end * minutes / cfg.train.minutes if cfg.train.minutes else cfg.optim.cooldown_end
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, minutes=minutes),
                                      optim=with_cooldown_end(cfg.optim, round(end)))
        if steps is not None and (steps != cfg.train.steps or cfg.train.minutes is not None):  # a new total of steps
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps, minutes=None),
                                      optim=with_cooldown_end(cfg.optim, steps))
        if launched_world().main:  # under torchrun, rank 0 alone speaks
            length = f"{cfg.train.steps} steps" if cfg.train.minutes is None else f"a {cfg.train.minutes:g}-minute budget"
            tqdm.write(f"run {run_dir} exists: resuming with its saved config (family {cfg.family}, {length})")
    elif adapter is not None:
        from .runs.adapter import new_adapter_run_config

        cfg = new_adapter_run_config(data, adapter, runs_dir=runs, minutes=minutes, data=settings.pop("adapter_data", None),
                                     **settings)
    elif minutes is not None:
        from .train.budget import describe_plan, plan_run

        if launched_world().distributed:
            raise ValueError("minutes (--minutes) times and plans a new run in one process: start it without "
                             "torchrun, or give --steps")
        if _pruned_start({}, init_from, runs):  # a budget plans its network among the full-width shapes
            raise ValueError(f"minutes (--minutes) plans a new run's network; to fine-tune the pruned run {init_from} "
                             "at its own widths give --steps")
        cfg, plan = plan_run(data, minutes, device=device, progress=progress, init_from=init_from, runs_dir=runs,
                             say=tqdm.write, **_latent_under(settings, runs))
        tqdm.write("\n".join(describe_plan(cfg, plan)))
        init_from = plan.init_from
    else:
        cfg = new_run_config(data, **_latent_under(_pruned_start(settings, init_from, runs), runs))
    if cfg.train.early_stop_on != "val_loss" and not cfg.train.eval_every:
        raise ValueError(f"early_stop_on {cfg.train.early_stop_on} (--early-stop-on) needs eval_every K > 0 "
                         "(--eval-every) to compute it")
    # under torchrun every process samples its share of the evaluation's images; rank 0 computes the figure
    evaluator = _training_evaluator(cfg, device) if cfg.train.eval_every else None
    if init_from == NO_INIT:
        init_from = None
    return train_loop(cfg, run_dir, device=device, init_from=init_from, progress=progress, evaluator=evaluator,
                      max_seconds=max_minutes * 60 if max_minutes is not None else None, compile=compile, workers=workers)


def _pruned_start(settings: dict, init_from: str | None, runs: Path) -> dict:
    """A new run's settings where init_from is a pruned network (compress/prune.py start_fields): its model
    fields under those given, so `train DATA --init-from PRUNED` fine-tunes that network at its own widths."""
    from .compress.prune import start_fields

    try:
        source = RunConfig.load(resolve_run(init_from, runs) / "config.json") if init_from else None
    except (FileNotFoundError, ValueError):
        return settings  # the training's own copy of the weights says what is wrong with it
    fields = start_fields(source.family, source.model) if source is not None else None
    if fields is None or settings.get("model", "diffusion") != "diffusion":
        return settings
    if source.compress is not None and source.compress.export != "none":
        raise ValueError(f"--init-from {init_from}: an {source.compress.variant} variant holds its network in an ONNX "
                         "graph; fine-tune the PyTorch one (compress --prune without --export), then export that run")
    return {**settings, "model_fields": {**fields, **(settings.get("model_fields") or {})}}


def _latent_under(settings: dict, runs: Path) -> dict:
    """A new run's settings with model_fields' "latent" (an autoencoder run of latent diffusion) found as a
    run name under `runs` (the --runs-dir) too, not only under the default runs folder."""
    fields = settings.get("model_fields") or {}
    latent = fields.get("latent")
    if not isinstance(latent, str) or not latent or not (runs / latent / "config.json").is_file():
        return settings
    return {**settings, "model_fields": {**fields, "latent": str(runs / latent)}}


def _training_evaluator(cfg: RunConfig, device: str):
    """FID/KID during training against the run's own data (TRAINING_EVAL_SAMPLE_OPTIONS, fixed seeds)."""
    from tqdm.auto import tqdm

    from .data import min_side
    from .distributed import launched_world
    from .evaluate import load_real
    from .metrics.evaluate import make_training_evaluator
    from .metrics.features import load_extractor

    ext = load_extractor(cfg.train.eval_extractor, data_source=cfg.data.source, device=device)
    real = load_real(cfg.data.source, extractor=ext, image_size=cfg.data.image_size, progress=False,
                     shortest=min_side(cfg.data))
    options = ", ".join(f"{k} {v}" for k, v in TRAINING_EVAL_SAMPLE_OPTIONS.items())
    if launched_world().main:  # under torchrun, rank 0 alone speaks
        tqdm.write(f"in-training evaluation: {cfg.train.eval_samples} samples ({options}) vs {len(real)} real images, "
                   f"extractor {ext.name}")
    return make_training_evaluator(real, ext, n=cfg.train.eval_samples, num_classes=getattr(cfg.model_config(), "num_classes", 0),
                                   sample_options=TRAINING_EVAL_SAMPLE_OPTIONS)


def save_images(images: list[Image.Image], out_dir: str | os.PathLike, *, prefix: str = "", grid: bool = True,
                watermark: bool | MarkSettings = True, names: list[str] | None = None) -> dict:
    """Write each image as a PNG with its settings in the metadata, plus grid.png; returns the paths.
    An image drawn from a sketch gets the drawing beside it (its settings' "sketch", a lossless PNG named by
    its SHA-256, written once however many images share it), so `sample --from` finds it again.
    watermark: marks (provenance.marks.mark_image) for images that have not been through it yet (generate and
    edit mark theirs) and for the grid; False writes them as they are. Each PNG, the grid too, is then signed with
    a C2PA manifest stating the model, its weights hash and the image's settings (provenance/outputs.py), unless
    watermark is False or MarkSettings(manifest=False); the grid's manifest states its tiles' settings and their
    model (none when they come from several). An upscaled image gets its input beside it the same way, and an
    edit its input image and mask.
    names: each image's file stem (default seedNNNNNN, with -labelL where it has a label)."""
    from .edit import INFO_KEYS
    from .upscale import INPUT_INFO_KEY

    out_dir = Path(out_dir)
    paths = []
    signer = OutputSigner(watermark)
    signer.ready()  # a broken configured key fails here, before any file is written
    images = [im if is_marked(im) else mark_image(im, marks=watermark) for im in images]
    for im in images:
        s = im.info.get("pixelforge", {})
        drawing = im.info.get(SKETCH_INFO_KEY)
        if drawing is not None and "sketch" in s and not (out_dir / s["sketch"]).exists():
            save_png(drawing, out_dir / s["sketch"])
        clip = im.info.get(AUDIO_INFO_KEY)
        if clip is not None and "audio" in s and not (out_dir / s["audio"]).exists():
            from .files import atomic_target

            with atomic_target(out_dir / s["audio"], suffix=".wav") as tmp:
                Path(tmp).write_bytes(clip)
        low = im.info.get(INPUT_INFO_KEY)
        if low is not None and "input" in s and not (out_dir / s["input"]).exists():
            save_png(low, out_dir / s["input"])
        for key, info_key in INFO_KEYS.items():  # an edit's input image and mask
            source = im.info.get(info_key)
            if source is not None and s.get(key) and not (out_dir / s[key]).exists():
                save_png(source, out_dir / s[key])
        label = s.get("label")
        stem = f"{prefix}seed{s.get('seed', len(paths)):06d}" + (f"-label{label}" if label is not None else "")
        stem = stem if names is None else prefix + names[len(paths)]
        paths.append(signer.save(im, out_dir / f"{stem}.png", s or None))
    grid_path = None
    if grid and images:
        scale = max(1, 64 // images[0].size[0])
        sheet = make_grid(images, scale=scale)
        tiles = [im.info.get("pixelforge", {}) for im in images]
        if watermark is not False:  # the grid gets a mark of its own (the tiles keep theirs)
            sheet = mark_image(sheet, settings={"grid_of": tiles}, marks=watermark)
        # its own manifest (no ingredients: each tile's PNG carries its own), the PNG as before without settings
        grid_path = signer.save(sheet, out_dir / "grid.png", manifest_settings=sheet.info.get("pixelforge") or {"grid_of": tiles},
                                model=signer.grid_model(tiles))
    return {"images": paths, "grid": grid_path}


def post_files(paths: list[str | os.PathLike], out_dir: str | os.PathLike, post: PostSettings | dict, *,
               watermark: bool | MarkSettings = True, callback=None) -> list[Path]:
    """Post-process image files (pixelforge.post) into out_dir, each as a PNG of the same stem; returns the paths.

    Each file is read as data folders are (a bad file is a ValueError naming it) in mode L or RGB. The output
    carries the input's pixelforge settings, if any, with the post-processing recorded under "post"; an image
    pixelforge made (its settings name a model) is marked again on its new pixels (provenance.marks.mark_image;
    watermark as generate()) and the sketch it was drawn from is copied beside it, so `sample --from` finds
    both. A file post-processed already is refused (its record would no longer say how it was made). Such an
    image's PNG is then signed with a C2PA manifest (as save_images; its model's weights hash where the model is
    found, as `sample --from` finds it); any other image is not claimed as generated: it is written unsigned.
    callback(done, total) reports each file done."""
    import shutil

    from .data.folder import check_file

    post = as_post_settings(post)
    if post is None:
        raise ValueError("no post-processing step asked for: give denoise, color, sharpen or upscale")
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no image to post-process")
    stems: dict[str, Path] = {}
    for path in paths:
        if path.stem in stems:
            raise ValueError(f"{path} and {stems[path.stem]} would both be written as {path.stem}.png")
        stems[path.stem] = path
    out_dir = Path(out_dir)
    record = post.to_record()
    upscaler = post_upscaler(post)  # a model named as the upscaler is loaded (and checked) once, before any file
    written = []
    signer = OutputSigner(watermark)
    signer.ready()  # a broken configured key fails here, before any file is written
    for i, path in enumerate(paths):
        image, reason = check_file(path)
        if image is None:
            raise ValueError(f"{path}: {reason}")
        try:
            s = read_settings(path)
        except ValueError:  # not a PNG pixelforge wrote: no settings to keep
            s = {}
        if s.get("post") is not None:
            raise ValueError(f"{path} is post-processed already ({', '.join(s['post'].get('order', []))}): "
                             "post-process the original image instead")
        (done,) = apply_post([image], post, upscaler)
        done.info.pop("pixelforge", None)  # the input's settings as read (JSON text); s holds them
        s = {**s, "post": record}
        out_dir.mkdir(parents=True, exist_ok=True)
        if s.get("model"):
            done = mark_image(done, settings=s, marks=watermark)
            s = done.info["pixelforge"]
            for key in ("sketch", "audio", "input", "image", "mask"):  # the drawing, clip, low-res input or edit's inputs
                kept = s.get(key)
                if isinstance(kept, str) and Path(kept).name == kept and (path.parent / kept).is_file() \
                        and not (out_dir / kept).exists():
                    shutil.copyfile(path.parent / kept, out_dir / kept)
            written.append(signer.save(done, out_dir / f"{path.stem}.png", s, run_dir=model_dir(s, path) if signer.enabled else None))
        else:
            written.append(save_png(done, out_dir / f"{path.stem}.png", s))
        if callback is not None:
            callback(i + 1, len(paths))
    return written
