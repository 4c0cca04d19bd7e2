"""Human pairwise ratings in SQLite, and the scores they imply: Elo and Bradley-Terry strengths.

A rating says which of two images a person preferred (or a tie). Each side is a model and the
settings its image was made with; scores are per model, or per model and sampling settings (two
samplers of one model are then two contestants).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Callable

ELO_START = 1000.0
ELO_K = 32.0
# settings that vary image to image rather than describing how a model samples: ignored when grouping
PER_IMAGE_KEYS = frozenset({"model", "family", "checkpoint", "seed", "label", "class_name", "prompt", "version"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model_a TEXT NOT NULL,
    settings_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    settings_b TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('a', 'b', 'tie'))
)
"""

METHOD = (
    f"Elo: every rating applied in the order given, start {ELO_START:g}, K={ELO_K:g}, a tie scores 0.5. "
    "Bradley-Terry: P(i beats j) = p_i / (p_i + p_j), fitted by the MM algorithm (Hunter 2004) with a tie "
    "counted as half a win for each side, and one win and one loss against a reference of strength 1 "
    "added to every contestant so that one that always wins keeps a finite strength (1 = the reference). "
    "Ratings of a contestant against itself are left out."
)


class RatingsDB:
    """A SQLite file of ratings; each call opens its own connection, so any thread may use it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def add(self, model_a: str, settings_a: dict, model_b: str, settings_b: dict, winner: str) -> int:
        if winner not in ("a", "b", "tie"):
            raise ValueError(f"winner must be a, b or tie, got {winner!r}")
        with closing(self._connect()) as con, con:
            cur = con.execute(
                "INSERT INTO ratings (created, model_a, settings_a, model_b, settings_b, winner) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), model_a, json.dumps(settings_a, sort_keys=True), model_b,
                 json.dumps(settings_b, sort_keys=True), winner),
            )
            return int(cur.lastrowid)

    def count(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM ratings").fetchone()[0])

    def rows(self) -> list[dict]:
        """Every rating, oldest first."""
        with closing(self._connect()) as con:
            cur = con.execute("SELECT id, created, model_a, settings_a, model_b, settings_b, winner FROM ratings ORDER BY id")
            return [
                {"id": r[0], "created": r[1], "a": {"model": r[2], "settings": json.loads(r[3])},
                 "b": {"model": r[4], "settings": json.loads(r[5])}, "winner": r[6]}
                for r in cur.fetchall()
            ]


def contestant(side: dict, by: str) -> tuple[str, tuple]:
    """The key a side is scored under: its model, or its model and its sampling settings."""
    if by == "model":
        return side["model"], ()
    if by == "settings":
        settings = side.get("settings") or {}
        # a nested setting (an image's post-processing record) is keyed by its JSON text, which is hashable
        return side["model"], tuple(sorted((k, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v)
                                           for k, v in settings.items() if k not in PER_IMAGE_KEYS))
    raise ValueError(f"scores are by model or by settings, got {by!r}")


def elo(matches: list[tuple], *, k: float = ELO_K, start: float = ELO_START) -> dict:
    """Elo ratings after applying (a, b, score_a) matches in order; score_a is 1, 0 or 0.5."""
    r: dict = {}
    for a, b, s_a in matches:
        ra, rb = r.setdefault(a, start), r.setdefault(b, start)
        e_a = 1.0 / (1.0 + 10 ** ((rb - ra) / 400.0))
        r[a] = ra + k * (s_a - e_a)
        r[b] = rb + k * ((1.0 - s_a) - (1.0 - e_a))
    return r


def bradley_terry(matches: list[tuple], *, iters: int = 10_000, tol: float = 1e-10) -> dict:
    """Bradley-Terry strengths from (a, b, score_a) matches by the MM algorithm (Hunter 2004, eq. 3).

    p_i <- W_i / sum_j n_ij / (p_i + p_j), with W_i the wins of i (ties half) and n_ij the games of
    i and j. A prior of one win and one loss against a reference of strength 1 keeps strengths finite
    and fixes their scale.
    """
    players = sorted({m[0] for m in matches} | {m[1] for m in matches}, key=str)
    if not players:
        return {}
    idx = {p: i for i, p in enumerate(players)}
    m = len(players)
    wins = [1.0] * m  # the prior's win
    games = [[0.0] * m for _ in range(m)]
    for a, b, s_a in matches:
        i, j = idx[a], idx[b]
        wins[i] += s_a
        wins[j] += 1.0 - s_a
        games[i][j] += 1.0
        games[j][i] += 1.0
    p = [1.0] * m
    for _ in range(iters):
        new = []
        for i in range(m):
            denom = 2.0 / (p[i] + 1.0)  # the prior's two games against the reference
            denom += sum(games[i][j] / (p[i] + p[j]) for j in range(m) if games[i][j])
            new.append(wins[i] / denom)
        change = max(abs(math.log(x / y)) for x, y in zip(new, p))
        p = new
        if change < tol:
            break
    return {player: p[idx[player]] for player in players}


def scores(rows: list[dict], *, by: str = "model", evaluation: Callable[[str], dict | None] = lambda _: None) -> dict:
    """Elo, Bradley-Terry strength, win/loss/tie counts and the newest evaluation of each contestant.
    "left_out" counts the ratings whose two sides are one contestant (by model: two settings of one
    model, what the page's default comparison makes); they score only by settings."""
    matches = []
    tally: dict = {}
    left_out = 0
    for row in rows:
        a, b = contestant(row["a"], by), contestant(row["b"], by)
        if a == b:
            left_out += 1
            continue
        s_a = {"a": 1.0, "b": 0.0, "tie": 0.5}[row["winner"]]
        matches.append((a, b, s_a))
        for key, s in ((a, s_a), (b, 1.0 - s_a)):
            t = tally.setdefault(key, {"count": 0, "wins": 0, "losses": 0, "ties": 0})
            t["count"] += 1
            t["wins" if s == 1.0 else "losses" if s == 0.0 else "ties"] += 1
    r_elo, r_bt = elo(matches), bradley_terry(matches)
    evals: dict = {}
    out = []
    for key, t in tally.items():
        model, settings = key
        if model not in evals:
            evals[model] = evaluation(model)
        name = model + (" (" + ", ".join(f"{k}={v}" for k, v in settings) + ")" if settings else "")
        out.append({"name": name, "model": model, "settings": dict(settings), "elo": round(r_elo[key], 2),
                    "bt_strength": round(r_bt[key], 4), **t, "evaluation": evals[model]})
    out.sort(key=lambda s: (-s["elo"], s["name"]))
    return {"by": by, "ratings": len(rows), "left_out": left_out, "method": METHOD, "scores": out}


def latest_evaluation(run_dir: str | Path) -> dict | None:
    """The newest line of a run's evaluations.jsonl (written by `pixelforge evaluate`), or None."""
    path = Path(run_dir) / "evaluations.jsonl"
    if not path.is_file():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    for line in reversed(lines):
        try:
            figures = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: fall back to the one before
        if figures.get("fid") is None:
            continue
        sampling = {k: v for k, v in (figures.get("sampling") or {}).items() if isinstance(v, (str, int, float, bool)) or v is None}
        return {"fid": float(figures["fid"]), "extractor": figures.get("extractor"), "n_fake": figures.get("n_fake"),
                "sampling": sampling}
    return None


def format_scores(result: dict) -> str:
    """The scores as a plain-text table."""
    rows = result["scores"]
    left_out = result.get("left_out", 0)
    why = (f"; {left_out} compare one model's sampling settings: see --by settings"
           if left_out and result["by"] == "model" else "")
    if not rows:
        return f"no ratings to score by {result['by']} ({result['ratings']} stored{why})"
    width = max(len("contestant"), *(len(s["name"]) for s in rows))
    lines = [f"{'contestant':<{width}}  {'Elo':>7}  {'BT':>7}  {'n':>4}  {'W-L-T':>9}  FID"]
    for s in rows:
        ev = s["evaluation"]
        fid = f"{ev['fid']:.3f} ({ev['extractor']})" if ev else "-"
        wlt = f"{s['wins']}-{s['losses']}-{s['ties']}"
        lines.append(f"{s['name']:<{width}}  {s['elo']:>7.1f}  {s['bt_strength']:>7.3f}  {s['count']:>4}  {wlt:>9}  {fid}")
    lines.append(f"{result['ratings']} ratings, scored by {result['by']}" + (f" ({left_out} left out{why})" if left_out else ""))
    return "\n".join(lines)


def find_evaluation(model: str, runs_dir: str | Path | None = None) -> dict | None:
    """The newest evaluation of a model named as `pixelforge` names it (run folder, run name or bundled model)."""
    from ..runs.store import resolve_run

    try:
        return latest_evaluation(resolve_run(model, runs_dir))
    except FileNotFoundError:
        return None
