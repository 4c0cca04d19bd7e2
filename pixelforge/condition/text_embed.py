"""A prompt's encoder outputs -> what a network takes: a vector added to its noise-level (or latent)
embedding and, for networks with cross-attention, a sequence of condition tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class TextConditioner(nn.Module):
    """pooled (B, text_dim), tokens (B, T, text_dim), mask (B, T), present (B,) -> vector (B, vector_dim),
    and where context_dim > 0 tokens (B, 1 + T, context_dim) with their mask (B, 1 + T).
    vector_dim 0 (only with context_dim > 0): no vector (None); the prompt reaches the network only
    through its tokens.

    pool "attention" adds to the vector a learned attention pooling of the prompt's tokens
    (TokenAttentionPool), so the vector can take what single words say wherever they stand; aligned:
    that pooling is trained before the run against the training images (condition/text_align.py) and
    then frozen.

    A sample whose prompt is absent (`present` False: the empty condition of classifier-free guidance,
    or a dropped one in training) gets a learned "no prompt" vector, and its tokens are nothing but a
    learned "no prompt" token. That token leads every sequence, so attention always has a token to
    attend to.
    """

    def __init__(self, text_dim: int, vector_dim: int, context_dim: int = 0, *, whiten: bool = False,
                 pool: str = "mean", aligned: bool = False):
        super().__init__()
        if vector_dim <= 0 and context_dim <= 0:
            raise ValueError("a text conditioner needs a vector (vector_dim > 0), tokens (context_dim > 0) or both")
        if pool not in TEXT_POOLS:
            raise ValueError(f"text_pool must be one of {', '.join(TEXT_POOLS)}, got {pool!r}")
        self.text_dim, self.context_dim = text_dim, context_dim
        if vector_dim > 0:
            self.vector = nn.Sequential(nn.Linear(text_dim, vector_dim), nn.SiLU(), nn.Linear(vector_dim, vector_dim))
            self.null_vector = nn.Parameter(torch.zeros(vector_dim))
        else:
            self.vector = self.null_vector = None
        # Built last, so a "mean" conditioner draws exactly the weights it drew before the option existed.
        self.token_pool = None
        if context_dim > 0:
            self.token_proj = nn.Linear(text_dim, context_dim)
            self.null_token = nn.Parameter(torch.randn(context_dim) * 0.02)
        self.whiten = whiten
        if whiten:  # identity until fit_statistics sets them from the training captions
            for name in ("pooled", "token"):
                self.register_buffer(f"{name}_mean", torch.zeros(text_dim))
                self.register_buffer(f"{name}_whiten", torch.eye(text_dim))
        self.pool_vector = None
        if aligned and pool != "attention":
            raise ValueError("text alignment (text_align_steps > 0) trains the token pooling: it needs text_pool 'attention'")
        if pool == "attention":
            if vector_dim <= 0:
                raise ValueError("text_pool 'attention' pools the tokens into the vector; it needs the vector (vector_dim > 0)")
            self.token_pool = TokenAttentionPool(text_dim, POOL_DIM)
            # the pooled prompt, L2-normalised (as alignment compares it) and scaled, mapped to the vector
            self.pool_vector = nn.Sequential(nn.Linear(POOL_DIM, vector_dim), nn.SiLU(), nn.Linear(vector_dim, vector_dim))
            if aligned:  # trained before the run and frozen (its weights are stored with the rest)
                self.token_pool.requires_grad_(False)

    @torch.no_grad()
    def fit_statistics(self, pooled: torch.Tensor, tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                       groups: torch.Tensor | None = None) -> None:
        """Whitening of the encoder's outputs from a data set's captions: pooled (N, text_dim), tokens
        (N, T, text_dim) with mask (N, T) (their real tokens only); groups (N,): the image each caption
        describes, where the data gives several wordings of one image.

        Why: a sentence encoder's vectors of captions from one small vocabulary share most of their
        direction, and what tells them apart is spread unevenly: two shapes captions that differ only
        in the place ("top left" / "bottom right") have cosine 0.984, two that differ in colour and
        shape 0.61. Fed as they are, the network learned colour and ignored the place entirely (every
        place gave the same image). Whitened (Su et al. 2021, "Whitening sentence representations"),
        each direction in which the captions vary has unit variance, the place's as much as the colour's.
        A floor on the variances (1/1000 of the largest) keeps directions in which the captions do
        not vary from being blown up: on the shapes captions the place lives in the 10th to 40th
        principal directions (variances 1/5 to 1/400 of the largest), which the floor keeps whole.

        With several wordings of each image (groups), the pooled vector's transform separates what a
        caption says from how it says it (a linear discriminant, images as the classes): directions in
        which the wordings of one image differ are shrunk, and those in which images differ get unit
        variance, weighted by how far they stand above the wording noise (see _discriminant). Whitening
        alone also gives the wording's own directions unit variance, which tied a model to the captions'
        sentence forms.
        """
        if not self.whiten:
            return
        pairs = [("pooled", pooled)]
        if tokens is not None and mask is not None and bool(mask.any()):
            pairs.append(("token", tokens[mask.bool()]))  # (real tokens, text_dim)
        if groups is not None and len(groups) == len(pooled) and len(torch.unique(groups)) < len(groups):
            x = pooled.detach().to("cpu", torch.float64)
            self.pooled_mean.copy_(x.mean(0).float())
            self.pooled_whiten.copy_(_discriminant(x, groups.to("cpu")).float())
            pairs = pairs[1:]
        for name, x in pairs:
            x = x.detach().to("cpu", torch.float64)
            mean = x.mean(0)  # (text_dim,)
            cov = torch.cov((x - mean).T) if len(x) > 1 else torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            eigval, eigvec = torch.linalg.eigh(cov)  # ascending; (text_dim,), (text_dim, text_dim)
            floor = max(1e-3 * float(eigval.max()), 1e-12)
            w = (eigvec / (eigval.clamp(min=0) + floor).sqrt()) @ eigvec.T  # (text_dim, text_dim), symmetric
            getattr(self, f"{name}_mean").copy_(mean.float())
            getattr(self, f"{name}_whiten").copy_(w.float())

    def _whitened(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if not self.whiten:
            return x
        mean, w = getattr(self, f"{name}_mean"), getattr(self, f"{name}_whiten")
        return (x - mean.to(x.dtype)) @ w.to(x.dtype)

    def forward(
        self, pooled: torch.Tensor, tokens: torch.Tensor | None, mask: torch.Tensor | None, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        present = present.bool()  # (B,)
        vector = None
        if self.vector is not None:
            prompt = self.vector(self._whitened(pooled, "pooled"))  # (B, vector_dim)
            if self.token_pool is not None:
                if tokens is None or mask is None:
                    raise ValueError("text_pool 'attention' needs the per-token text states and their mask")
                # unit length (as alignment compares them) times sqrt(POOL_DIM): components of unit scale, as a
                # label embedding's, so the pooled prompt is as loud as the sentence vector from the first step
                pooled_tokens = nn.functional.normalize(self.token_pool(tokens, mask), dim=-1) * POOL_DIM ** 0.5
                prompt = prompt + self.pool_vector(pooled_tokens.to(prompt.dtype))
            vector = torch.where(present[:, None], prompt, self.null_vector.to(prompt.dtype))
        if self.context_dim == 0:
            return vector, None, None
        if tokens is None or mask is None:
            raise ValueError("per-token text states and their mask are needed for cross-attention")
        b = pooled.shape[0]
        null = self.null_token.to(tokens.dtype).expand(b, 1, -1)  # (B, 1, context_dim)
        out_tokens = torch.cat([null, self.token_proj(self._whitened(tokens, "token"))], dim=1)  # (B, 1 + T, context_dim)
        out_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=mask.device), mask.bool() & present[:, None]], dim=1)
        return vector, out_tokens, out_mask


POOL_DIM = 256  # width of the pooled prompt (and of the space alignment matches images in)


class TokenAttentionPool(nn.Module):
    """tokens (B, T, text_dim), mask (B, T) -> (B, out_dim): `heads` learned queries attend over the
    prompt's real tokens (normalised encoder states), and their read-outs are mapped to out_dim.

    Why: a sentence vector (the encoder's mean of its token states) keeps little of a short phrase in a
    long prompt: on the shapes captions the place ("at the top left") is 2% of the pooled vectors'
    variance, and a model conditioned on it ignored the place. Cross-attention from the image can take
    it from the tokens, but with one caption template it learnt the place by the words' position in the
    sentence, and with captions in several wordings it did not learn the place at all. A learned
    attention pooling picks words by what they are: a probe (the same pooling with a linear read-out,
    trained on the shapes captions in five wordings) reads the place of 95% of held-out prompts phrased
    in words it never saw in those forms, against 57% from the sentence vector. Learnt through the
    denoiser's loss alone it did not pick the place up (condition/text_align.py says what does).
    """

    def __init__(self, text_dim: int, out_dim: int, heads: int = 8, head_dim: int = 32):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.LayerNorm(text_dim)
        self.key = nn.Linear(text_dim, heads * head_dim)
        self.value = nn.Linear(text_dim, heads * head_dim)
        self.query = nn.Parameter(torch.randn(heads, head_dim) * head_dim ** -0.5)
        self.out = nn.Linear(heads * head_dim, out_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = tokens.shape
        if t == 0:  # no tokens (an absent prompt): nothing to pool
            return self.out.bias.to(tokens.dtype).expand(b, -1)
        x = self.norm(tokens)
        k = self.key(x).view(b, t, self.heads, self.head_dim)  # (B, T, H, d)
        v = self.value(x).view(b, t, self.heads, self.head_dim)
        scores = torch.einsum("hd,bthd->bht", self.query.to(k.dtype), k) * self.head_dim ** -0.5  # (B, H, T)
        real = mask.bool()[:, None, :]  # (B, 1, T)
        scores = scores.masked_fill(~real, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1) * real.any(-1, keepdim=True)  # an all-padding row reads nothing
        read = torch.einsum("bht,bthd->bhd", weights, v).reshape(b, self.heads * self.head_dim)
        return self.out(read)


def _discriminant(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """x (N, D) float64 vectors of N captions, groups (N,) the image each describes -> W (D, D) so that
    (x - mean) @ W keeps what tells images apart and drops how one image was worded.

    In the space where the within-image (wording) covariance S_w is white, the between-image covariance
    has eigenvalues lam (signal-to-noise ratios) along eigenvectors u; each is scaled by
    sqrt(lam) / (lam + 1): a direction with lam >> 1 ends with unit content variance and wording noise
    1/lam, one with lam << 1 (mostly wording) fades out. S_w gets a floor of 1e-3 of the largest total
    variance, so directions in which no caption varies are not blown up.
    """
    _, inverse = torch.unique(groups, return_inverse=True)
    k = int(inverse.max()) + 1
    count = torch.zeros(k, dtype=x.dtype).index_add_(0, inverse, torch.ones(len(x), dtype=x.dtype))  # (K,)
    means = torch.zeros(k, x.shape[1], dtype=x.dtype).index_add_(0, inverse, x) / count[:, None]  # (K, D)
    within = x - means[inverse]  # (N, D)
    s_w = within.T @ within / max(len(x) - k, 1)  # (D, D)
    centred = x - x.mean(0)
    s_t = centred.T @ centred / max(len(x) - 1, 1)
    floor = max(1e-3 * float(torch.linalg.eigvalsh(s_t).max()), 1e-12)
    ev, evec = torch.linalg.eigh(s_w)
    a = (evec / (ev.clamp(min=0) + floor).sqrt()) @ evec.T  # (D, D): S_w^(-1/2)
    s_b = s_t - s_w  # (D, D) between-image covariance (up to the counts' weighting)
    lam, u = torch.linalg.eigh(a @ s_b @ a)
    lam = lam.clamp(min=0)
    return a @ u @ torch.diag(lam.sqrt() / (lam + 1)) @ u.T


@dataclass(frozen=True)
class TextFields:
    """The text fields every family's config carries (its config derives from this one dataclass).

    text_encoder: the text encoder's name or local folder (condition/text.py); "" for no text.
    text_dim: its width, 0 for a model without text conditioning (the conditioner is then not built,
        so label-only and unconditional models keep their weights).
    text_tokens: the fixed number of tokens every prompt is padded or truncated to.
    text_pool: how the prompt becomes the vector: "mean" (the encoder's sentence vector) or "attention"
        (the sentence vector plus a learned attention pooling of the tokens; TokenAttentionPool says why).
    text_align_steps: with text_pool "attention", steps of contrastive alignment of the token pooling
        with the training images before a new run's first step, after which it is frozen (0: none; the
        pooling then learns with the network; condition/text_align.py says why).
    text_whiten: the encoder's outputs are whitened with statistics of the training captions, stored
        with the weights (TextConditioner.fit_statistics says why). Off by default: on the shapes set it
        made the place learnable (85% of held-out prompts in their caption wording, against 12%
        without) but prompts worded unlike the captions followed much worse (colour 29% against 98%),
        since it also amplifies what the captions never vary in. Where the data gives several wordings
        per image the pooled vector gets a discriminant instead, which kept other wordings' colour at
        97%; the bundled shapes-text card has the figures.
    A family's __post_init__ calls check_text_fields, and its BOUNDS include TEXT_BOUNDS.
    """

    text_encoder: str = ""
    text_dim: int = 0
    text_tokens: int = 32
    text_whiten: bool = False
    text_pool: str = "mean"
    text_align_steps: int = 0


TEXT_POOLS = ("mean", "attention")
# Bounds of the text fields a family's config carries (models/limits.py check_bounds): the encoder's
# width (0: no text conditioning) and its fixed token length.
TEXT_BOUNDS = {"text_dim": (0, 4096), "text_tokens": (2, 512), "text_align_steps": (0, 100_000)}
TEXT_FIELD_NAMES = ("text_encoder", "text_dim", "text_tokens", "text_whiten", "text_pool", "text_align_steps")


def check_text_fields(config) -> None:
    """text_encoder (a name or local folder) and text_dim (its width) go together: both or neither."""
    if not isinstance(config.text_encoder, str):
        raise ValueError(f"text_encoder must be a text encoder's name or folder, got {config.text_encoder!r}")
    if not isinstance(config.text_whiten, bool):
        raise ValueError(f"text_whiten must be true or false, got {config.text_whiten!r}")
    if config.text_pool not in TEXT_POOLS:
        raise ValueError(f"text_pool must be one of {', '.join(TEXT_POOLS)}, got {config.text_pool!r}")
    if config.text_align_steps and config.text_pool != "attention":
        raise ValueError(f"text_align_steps {config.text_align_steps} aligns the token pooling: it needs text_pool "
                         f"'attention', got {config.text_pool!r}")
    if bool(config.text_encoder) != bool(config.text_dim):
        raise ValueError("text_encoder and text_dim go together: set both (text conditioning) or neither, "
                         f"got {config.text_encoder!r} and {config.text_dim}")


def unused_text_fields(config) -> tuple[str, ...]:
    """The text fields a config without text conditioning ignores (`pixelforge info` leaves them out)."""
    return () if config.text_dim else TEXT_FIELD_NAMES


def make_text_conditioner(config, vector_dim: int, context_dim: int = 0) -> TextConditioner | None:
    """The conditioner of a config's text fields, or None for a model without text (text_dim 0).

    Build it after the family's other modules, inside the same seeded_init: a model without text then
    draws exactly the weights it drew before text conditioning existed."""
    if not config.text_dim:
        return None
    return TextConditioner(config.text_dim, vector_dim, context_dim, whiten=config.text_whiten, pool=config.text_pool,
                           aligned=config.text_align_steps > 0)


def fit_text_statistics(model: nn.Module, pooled: torch.Tensor, tokens: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> None:
    """Fit every text conditioner of a model (a GAN has two) to a data set's caption embeddings (groups:
    the image of each, where there are several wordings per image); a fresh training run calls it before
    its first step (a resumed one restores them with the weights). A frozen conditioner (no weight that trains:
    an adapter run's base) keeps the statistics it came with."""
    for module in model.modules():
        if isinstance(module, TextConditioner) and any(p.requires_grad for p in module.parameters()):
            module.fit_statistics(pooled, tokens, mask, groups)


def text_inputs(cond, b: int, text_dim: int, device: torch.device):
    """A Cond's prompt as TextConditioner's arguments (pooled, tokens, mask, present) for B samples;
    a Cond without text (or none at all) is the absent prompt for every sample."""
    if cond is None or cond.text is None:
        return (torch.zeros(b, text_dim, device=device), torch.zeros(b, 0, text_dim, device=device),
                torch.zeros(b, 0, dtype=torch.bool, device=device), torch.zeros(b, dtype=torch.bool, device=device))
    if cond.text.shape != (b, text_dim):
        raise ValueError(f"the prompt embeddings are {tuple(cond.text.shape)}; this model takes ({b}, {text_dim}) "
                         "(one text_dim-wide vector per image, from the config's text_encoder)")
    tokens, mask = cond.text_tokens, cond.text_mask
    if tokens is None:
        tokens, mask = cond.text.new_zeros(b, 0, text_dim), torch.zeros(b, 0, dtype=torch.bool, device=device)
    return cond.text.to(device), tokens.to(device), mask.to(device), cond.present.to(device)


def text_condition(conditioner: TextConditioner | None, cond, b: int, device: torch.device):
    """What a network takes from a Cond's prompt: (vector (B, vector_dim), tokens, token mask), tokens and
    mask None unless the conditioner has context_dim > 0; (None, None, None) without a conditioner.
    cond None or without text: the absent prompt (the learned "no prompt" vector) for every sample."""
    if conditioner is None:
        return None, None, None
    return conditioner(*text_inputs(cond, b, conditioner.text_dim, device))


def text_vector(conditioner: TextConditioner | None, cond, b: int, device: torch.device) -> torch.Tensor | None:
    """The pooled-prompt vector (B, vector_dim) a family adds where it adds a label embedding; None
    without a conditioner. See text_condition."""
    return text_condition(conditioner, cond, b, device)[0]
