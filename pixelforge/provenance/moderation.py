"""Prompt moderation: a policy file users edit (blocked terms, regex patterns, concepts matched by
text-embedding similarity) that every prompt passes before any compute, in the API, CLI and server.

The policy is TOML (docs/moderation.md; the shipped default, assets/moderation/default-policy.toml,
documents every key). What the blocked-term matching catches, and what it does not:

- caught: any letter case and Unicode compatibility forms (NFKC, then casefold: "ＢＬＯＣＫ",
  "Block"), accents and invisible format characters ("blöck", "blo\\u200bck"), simple leetspeak
  (0->o, 1->i, 3->e, 4->a, 5->s, 7->t, 8->b, @->a, $->s; "l" and "i" count as one letter, so
  "b1ock" is "block"), and a term spelt out with separators between single letters ("b.l.o.c.k",
  "b l o c k", "b-l-o-c-k");
- not caught: a term inside a longer word ("xblockx"; terms match whole words, so list plurals and
  other forms), split into longer fragments ("bl.ock"), letters repeated ("bloooock"), look-alike
  letters of other scripts (Cyrillic "о" for "o"), or a misspelling. Patterns and concepts are the
  tools for those.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import re
import tomllib
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch

if TYPE_CHECKING:  # the text encoder (and transformers) is imported only for a policy with concepts
    from pixelforge.condition.text import TextEncoder

DEFAULT_POLICY_FILE = Path(__file__).resolve().parent.parent / "assets" / "moderation" / "default-policy.toml"
POLICY_ENV = "PIXELFORGE_MODERATION_POLICY"  # a policy file, or "none"; read where the policy is "default"
DEFAULT = "default"  # the policy named by $PIXELFORGE_MODERATION_POLICY, else the shipped file
OFF = "none"
POLICY_VERSION = 1
DEFAULT_THRESHOLD = 0.6  # cosine; see docs/moderation.md for the figures it was chosen from
CONCEPT_MAX_TOKENS = 128  # prompt tokens the concept check reads per clause
KINDS = ("blocked", "pattern", "concept")

log = logging.getLogger("pixelforge.moderation")

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# Leetspeak read as letters. "l" joins "i" and "1" in one letter: "b1ock" and "kil1" both match.
_LEET = str.maketrans({"0": "o", "1": "i", "l": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b",
                       "@": "a", "$": "s"})
_WORD = re.compile(r"[^\W_]+")  # letters and digits; "_" separates like any punctuation
_CLAUSE = re.compile(r"[.!?;\n]+")


def _skeleton(text: str) -> str:
    """NFKC, casefold, accents and format characters (zero-width spaces) removed, leetspeak read as letters."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in unicodedata.normalize("NFKD", text)
                   if not unicodedata.combining(c) and unicodedata.category(c) != "Cf")
    return unicodedata.normalize("NFC", text).translate(_LEET)


def words(text: str) -> list[str]:
    """The words blocked terms are matched against (see the module's docstring)."""
    return _WORD.findall(_skeleton(text))


def _spelled(ws: list[str]) -> list[str]:
    """Runs of two or more one-letter words joined: "b.l.o.c.k" -> "block" (and "a b l o c k" -> "ablock")."""
    runs, current = [], []
    for w in [*ws, ""]:
        if len(w) == 1:
            current.append(w)
            continue
        if len(current) >= 2:
            runs.append("".join(current))
        current = []
    return runs


@dataclass(frozen=True)
class Decision:
    """The outcome of checking one prompt. rule: "KIND:ID" of the rule that refused it (KIND one of
    blocked, pattern, concept), None where allowed; reason: why, without the prompt's text unless the
    policy sets log_prompts = true."""

    allowed: bool
    rule: str | None = None
    reason: str = ""

    @property
    def kind(self) -> str | None:
        return self.rule.split(":", 1)[0] if self.rule else None


ALLOWED = Decision(True, None, "no rule matched")


class ModerationRefused(ValueError):
    """A prompt the moderation policy refuses. field: "prompt", "prompts" or "negative_prompt"; index:
    the image's position for "prompts"; the message names the policy, the field and the rule."""

    def __init__(self, policy: "ModerationPolicy", field: str, index: int | None, decision: Decision, prompt: str):
        self.policy, self.field, self.index, self.decision = policy, field, index, decision
        self._prompt = prompt  # kept off the message: log_line() adds it only where the policy allows
        super().__init__(f"{self.where} refused by the moderation policy {policy.name}: rule {decision.rule} "
                         f"({decision.reason})")

    @property
    def where(self) -> str:
        return self.field if self.index is None else f"{self.field}[{self.index}]"

    def log_line(self) -> str:
        """What a log records of the refusal: the field, the policy and the rule; the prompt itself only
        with log_prompts = true."""
        line = f"moderation refused {self.where} (policy {self.policy.name}): rule {self.decision.rule} ({self.decision.reason})"
        return line + (f"; prompt {self._prompt!r}" if self.policy.log_prompts else "")


@dataclass(frozen=True)
class BlockedRule:
    id: str
    terms: tuple[tuple[str, tuple[str, ...]], ...]  # each term as written and as its words (see words())
    reason: str = ""


@dataclass(frozen=True)
class PatternRule:
    id: str
    regex: re.Pattern
    reason: str = ""


@dataclass(frozen=True)
class ConceptRule:
    id: str
    text: str
    threshold: float
    reason: str = ""


Rule = Union[BlockedRule, PatternRule, ConceptRule]


def _contains(seq: list[str], part: tuple[str, ...]) -> bool:
    n = len(part)
    return any(tuple(seq[i:i + n]) == part for i in range(len(seq) - n + 1))


@dataclass(frozen=True)
class ModerationPolicy:
    """A policy read from a TOML file (load_policy); check(prompt) -> Decision. sha256 is the file's
    digest: the concept embeddings are computed once per digest and encoder."""

    path: Path
    sha256: str
    log_prompts: bool = False
    blocked: tuple[BlockedRule, ...] = ()
    patterns: tuple[PatternRule, ...] = ()
    concepts: tuple[ConceptRule, ...] = ()
    encoder: str = "all-MiniLM-L6-v2"

    @property
    def name(self) -> str:
        return self.path.name if self.path == DEFAULT_POLICY_FILE else str(self.path)

    def check(self, prompt: str) -> Decision:
        """Whether a prompt is allowed; the first rule that refuses it (blocked terms, then patterns,
        then concepts) otherwise."""
        if not isinstance(prompt, str):
            raise ValueError(f"a prompt must be text, got {type(prompt).__name__}")
        return self._blocked(prompt) or self._pattern(prompt) or self._concept(prompt) or ALLOWED

    def _refuse(self, kind: str, rule: Rule, why: str, shown: str) -> Decision:
        reason = why + (f" {shown}" if self.log_prompts and shown else "")
        return Decision(False, f"{kind}:{rule.id}", reason + (f"; {rule.reason}" if rule.reason else ""))

    def _blocked(self, prompt: str) -> Decision | None:
        if not self.blocked:
            return None
        ws = words(prompt)
        spelled = _spelled(ws)
        for rule in self.blocked:
            for term, term_words in rule.terms:
                compact = "".join(term_words)
                if _contains(ws, term_words) or (len(compact) >= 3 and any(compact in s for s in spelled)):
                    return self._refuse("blocked", rule, "a blocked term", f"({term!r})")
        return None

    def _pattern(self, prompt: str) -> Decision | None:
        text = unicodedata.normalize("NFKC", prompt)
        for rule in self.patterns:
            m = rule.regex.search(text)
            if m:
                return self._refuse("pattern", rule, "matches a blocked pattern", f"(at {m.group(0)!r})")
        return None

    def _concept(self, prompt: str) -> Decision | None:
        if not self.concepts or not prompt.strip():
            return None
        from pixelforge.condition.text import load_text_encoder

        encoder = load_text_encoder(self.encoder, max_tokens=CONCEPT_MAX_TOKENS)
        concepts = _concept_vectors(self.sha256, self.encoder, tuple(c.text for c in self.concepts))  # (K, D)
        pieces = _pieces(prompt)
        vectors = torch.nn.functional.normalize(encoder.encode([_fit(encoder, p) for p in pieces]).pooled.cpu(), dim=-1)  # (P, D)
        cosine = (vectors @ concepts.T).amax(0)  # (K,) the closest piece to each concept
        over = [(float(cosine[k]) - c.threshold, k) for k, c in enumerate(self.concepts) if cosine[k] >= c.threshold]
        if not over:
            return None
        _, k = max(over)
        rule = self.concepts[k]
        return self._refuse("concept", rule, f"close to a listed concept (cosine {float(cosine[k]):.2f} >= "
                            f"{rule.threshold:g})", "")

    def enforce(self, items: list[tuple[str, int | None, str]]) -> None:
        """Check (field, index, prompt) items; a ModerationRefused for the first refused one. Each
        distinct prompt is checked once."""
        seen: dict[str, Decision] = {}
        for field, index, prompt in items:
            decision = seen.get(prompt) or self.check(prompt)
            seen[prompt] = decision
            if not decision.allowed:
                raise ModerationRefused(self, field, index, decision, prompt)


WINDOW_WORDS = 16  # a clause longer than this is also read in windows of this many words, half overlapping


def _pieces(prompt: str) -> list[str]:
    """What the concept check embeds: the whole prompt, each clause (an unrelated clause would otherwise dilute
    a listed concept) and, for a long clause, overlapping windows of words (which also reach past the
    encoder's token limit)."""
    pieces = [prompt.strip()]
    for clause in (c.strip() for c in _CLAUSE.split(prompt)):
        pieces.append(clause)
        ws = clause.split()
        if len(ws) > WINDOW_WORDS:
            step = WINDOW_WORDS // 2
            pieces += [" ".join(ws[i:i + WINDOW_WORDS]) for i in range(0, len(ws) - step, step)]
    return list(dict.fromkeys(p for p in pieces if p))


def _fit(encoder: TextEncoder, text: str) -> str:
    """text cut to what the encoder reads (its max_tokens, special tokens included), so a long prompt is not
    truncated by the encoder with a warning that quotes it. A few tokens are left spare: a cut inside a word
    may tokenize into one or two more pieces."""
    if not getattr(encoder.tokenizer, "is_fast", False):  # offsets need a fast tokenizer; the encoder cuts instead
        return text
    enc = encoder.tokenizer(text, truncation=True, max_length=max(2, encoder.max_tokens - 4),
                            return_offsets_mapping=True, add_special_tokens=True)
    ends = [end for _, end in enc["offset_mapping"] if end > 0]
    return text[:max(ends)] if ends else text


@functools.lru_cache(maxsize=16)
def _concept_vectors(policy_sha256: str, encoder_name: str, texts: tuple[str, ...]) -> torch.Tensor:
    """The concepts' L2-normalised pooled embeddings (K, D) on the CPU, computed once per policy file
    digest and encoder."""
    from pixelforge.condition.text import load_text_encoder

    encoder = load_text_encoder(encoder_name, max_tokens=CONCEPT_MAX_TOKENS)
    return torch.nn.functional.normalize(encoder.encode([_fit(encoder, t) for t in texts]).pooled.cpu(), dim=-1)


# ---------------------------------------------------------------------------------------------------
# Reading a policy file.

_TOP_KEYS = ("version", "log_prompts", "blocked", "patterns", "similarity", "concepts")
_ENTRY_KEYS = {"blocked": ("id", "terms", "reason"), "patterns": ("id", "regex", "reason"),
               "concepts": ("id", "text", "threshold", "reason")}


def _threshold(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"{where}: threshold must be a number in (0, 1] (a cosine similarity), got {value!r}")
    return float(value)


def _entries(data: dict, key: str, where: str) -> list[tuple[str, dict, str]]:
    """(id, entry, "FILE: KEY[i] (id ...)") for each table of an array of tables, its keys and id checked."""
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{where}: {key} must be an array of tables ([[{key}]] entries)")
    out = []
    for i, entry in enumerate(entries):
        at = f"{where}: {key}[{i}]" + (f" (id {entry['id']!r})" if isinstance(entry.get("id"), str) else "")
        unknown = sorted(set(entry) - set(_ENTRY_KEYS[key]))
        if unknown:
            raise ValueError(f"{at}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_ENTRY_KEYS[key])}")
        rule_id = entry.get("id")
        if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
            raise ValueError(f"{at}: id must be 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter "
                             f"or digit), got {rule_id!r}")
        reason = entry.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError(f"{at}: reason must be a string, got {type(reason).__name__}")
        out.append((rule_id, entry, at))
    return out


def parse_policy(text: str, path: Path) -> ModerationPolicy:
    """A policy from TOML text; a ValueError naming the file and the entry for anything invalid."""
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{where}: not valid TOML ({e})") from None
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; valid: {', '.join(_TOP_KEYS)}")
    if data.get("version", POLICY_VERSION) != POLICY_VERSION:
        raise ValueError(f"{where}: version {data['version']!r} is not supported; this pixelforge reads version {POLICY_VERSION}")
    log_prompts = data.get("log_prompts", False)
    if not isinstance(log_prompts, bool):
        raise ValueError(f"{where}: log_prompts must be true or false, got {log_prompts!r}")
    similarity = data.get("similarity", {})
    if not isinstance(similarity, dict) or set(similarity) - {"encoder", "threshold"}:
        raise ValueError(f"{where}: similarity must be a table with encoder and threshold only")
    encoder = similarity.get("encoder", "all-MiniLM-L6-v2")
    if not isinstance(encoder, str) or not encoder.strip():
        raise ValueError(f"{where}: similarity.encoder must be a text encoder name or folder, got {encoder!r}")
    default_threshold = _threshold(similarity.get("threshold", DEFAULT_THRESHOLD), f"{where}: similarity")

    ids: set[str] = set()

    def unique(rule_id: str, at: str) -> str:
        if rule_id in ids:
            raise ValueError(f"{at}: id {rule_id!r} is used by another rule; ids must be unique")
        ids.add(rule_id)
        return rule_id

    blocked = []
    for rule_id, entry, at in _entries(data, "blocked", where):
        terms = entry.get("terms")
        if not isinstance(terms, list) or not terms or not all(isinstance(t, str) for t in terms):
            raise ValueError(f"{at}: terms must be a non-empty list of strings")
        parsed = []
        for j, term in enumerate(terms):
            ws = tuple(words(term))
            if not ws:
                raise ValueError(f"{at}: terms[{j}] {term!r} has no letters or digits to match")
            parsed.append((term, ws))
        blocked.append(BlockedRule(unique(rule_id, at), tuple(parsed), entry.get("reason", "")))
    patterns = []
    for rule_id, entry, at in _entries(data, "patterns", where):
        source = entry.get("regex")
        if not isinstance(source, str) or not source:
            raise ValueError(f"{at}: regex must be a non-empty string")
        try:
            regex = re.compile(source, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"{at}: invalid regular expression {source!r}: {e.msg} at position {e.pos}") from None
        if regex.search(""):
            raise ValueError(f"{at}: regex {source!r} matches the empty prompt, so it would refuse every prompt")
        patterns.append(PatternRule(unique(rule_id, at), regex, entry.get("reason", "")))
    concepts = []
    for rule_id, entry, at in _entries(data, "concepts", where):
        concept = entry.get("text")
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"{at}: text must be a non-empty string describing the concept")
        threshold = _threshold(entry["threshold"], at) if "threshold" in entry else default_threshold
        concepts.append(ConceptRule(unique(rule_id, at), concept.strip(), threshold, entry.get("reason", "")))
    return ModerationPolicy(path=path, sha256=hashlib.sha256(text.encode()).hexdigest(), log_prompts=log_prompts,
                            blocked=tuple(blocked), patterns=tuple(patterns), concepts=tuple(concepts), encoder=encoder)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, size: int, mtime_ns: int) -> ModerationPolicy:
    # Keyed by size and mtime too, so an edited file is read again.
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{file}: not UTF-8 text ({e})") from None
    return parse_policy(text, file)


def load_policy(path: str | os.PathLike) -> ModerationPolicy:
    """A policy file -> ModerationPolicy (read again when the file changes)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"moderation policy {file}: no such file")
    resolved = file.resolve()
    st = resolved.stat()
    return _load_cached(str(resolved), st.st_size, st.st_mtime_ns)


def resolve_policy(spec: "str | os.PathLike | ModerationPolicy | None" = DEFAULT) -> ModerationPolicy | None:
    """What a Generator, the CLI or the server moderates with: a ModerationPolicy as given; a file path;
    None or "none": no moderation; "default": $PIXELFORGE_MODERATION_POLICY (a file or "none") when set,
    else the shipped default policy."""
    if spec is None or isinstance(spec, ModerationPolicy):
        return spec
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ValueError("moderation policy: expected a file, 'default' or 'none', got an empty value")
    if text == DEFAULT:
        text = os.environ.get(POLICY_ENV, "").strip() or str(DEFAULT_POLICY_FILE)
    if text.lower() == OFF:
        return None
    return load_policy(text)
