"""`pixelforge serve` (the HTTP API and web page) and `pixelforge ratings` (scores from the ratings it collects)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import _add_watermark_options, _float_range, _Help, _int_range, _marks


def cmd_serve(a) -> int:
    import os

    try:
        import uvicorn

        from .serve import create_app
        from .serve.limits import ServerLimits, host_names, uvicorn_options
    except ImportError as e:
        raise ValueError(f"serving needs the serve extra (pip install 'pixelforge[serve]'): {e}") from None
    api_key = a.api_key or os.environ.get("PIXELFORGE_API_KEY") or None
    if a.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {a.host} without an API key: anyone who can reach it can use it "
              "(set --api-key or $PIXELFORGE_API_KEY)", file=sys.stderr)
    limits = ServerLimits(max_connections=a.max_connections, max_connections_per_client=a.max_connections_per_client,
                          max_streams=a.max_streams, max_streams_per_client=a.max_streams_per_client,
                          stream_max_s=a.stream_max, idle_timeout_s=a.idle_timeout,
                          max_upload_bytes=a.max_upload_bytes, max_upload_pixels=a.max_upload_pixels)
    app = create_app(a.run or None, api_key=api_key, max_queue=a.max_queue, workers=a.workers, job_timeout_s=a.job_timeout,
                     db_path=a.db, cors_origins=a.cors_origin, device=a.device, runs_dir=a.runs_dir,
                     allowed_hosts=host_names(a.host, a.allowed_host), api_docs=a.api_docs, limits=limits,
                     moderation=a.moderation_policy, watermark=_marks(a))
    host = f"[{a.host}]" if ":" in a.host else a.host
    print(f"serving {', '.join(app.state.generators)} at http://{host}:{a.port}/  "
          f"(API: http://{host}:{a.port}/api/v1, schema: /openapi.json; ratings in {app.state.ratings.path}; "
          f"moderation policy: {app.state.moderation.name if app.state.moderation else 'none'})")
    # Ctrl-C waits at most 5 s for open event streams before the workers are stopped
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning" if a.quiet else "info", timeout_graceful_shutdown=5,
                **uvicorn_options(limits))
    return 0


def add_serve(sub):
    from .serve.limits import ServerLimits

    d = ServerLimits()  # the defaults
    p = sub.add_parser(
        "serve",
        help="an HTTP API and a web page for generation and human ratings",
        description="Serve runs or bundled models over HTTP: the web page at /, the API under /api/v1 (schema at "
        "/openapi.json). Requests are queued and run by worker threads; a full queue answers 429. Listens on "
        "loopback only unless --host says otherwise.",
        formatter_class=_Help,
    )
    p.add_argument("run", nargs="*", metavar="RUN", help="run folders, run names or bundled models (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; set an API key then)")
    p.add_argument("--port", type=_int_range(0, 65535), default=8000, help="port to listen on")
    p.add_argument("--api-key", default=None, help="key every endpoint but health requires (default $PIXELFORGE_API_KEY, "
                   "better: other users can read command lines; none: open)")
    p.add_argument("--workers", type=_int_range(1), default=1, help="generation jobs run at once")
    p.add_argument("--max-queue", type=_int_range(1), default=16, help="jobs that may wait before requests get 429")
    p.add_argument("--job-timeout", type=_float_range(0, above_lo=True), default=300.0, help="seconds a job may run before it is stopped")
    p.add_argument("--db", default=None, help="ratings SQLite file (default RUNS_DIR/ratings.sqlite)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from this origin to call the API (repeatable; default: none)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the server answers to besides localhost, 127.0.0.1, ::1 and the --host address "
                   "(repeatable; other Host headers get 400, which stops DNS rebinding; '*': any)")
    p.add_argument("--api-docs", action="store_true",
                   help="serve the interactive API docs at /docs (they load their script from a public CDN "
                   "into this origin, where the page keeps the API key: off unless asked)")
    p.add_argument("--max-connections", type=int, default=d.max_connections, help="open connections in all; one more gets 503")
    p.add_argument("--max-connections-per-client", type=int, default=d.max_connections_per_client,
                   help="open connections of one client IP; one more gets 429")
    p.add_argument("--max-streams", type=int, default=d.max_streams, help="open job event streams in all; one more gets 429")
    p.add_argument("--max-streams-per-client", type=int, default=d.max_streams_per_client,
                   help="open job event streams of one client IP; one more gets 429")
    p.add_argument("--stream-max", type=float, default=d.stream_max_s, metavar="SECONDS",
                   help="an event stream's lifetime; the page then reconnects")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="SECONDS",
                   help="a connection silent this long (before a request, between requests, or while sending "
                   "one) is closed")
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes, metavar="BYTES",
                   help="an image sent with a job (sketch, image to edit, mask), decoded from its base64; over it: 422 "
                   "(the whole request body is also bounded, at 1 MB)")
    p.add_argument("--max-upload-pixels", type=int, default=d.max_upload_pixels, metavar="PIXELS",
                   help="an uploaded image's width x height, read before it is decoded; over it: 422")
    p.add_argument("--moderation-policy", default="default", metavar="FILE|none",
                   help="check every prompt against this moderation policy (TOML; docs/moderation.md) before a job "
                   "is queued; a refused one gets 422. 'none': no moderation; 'default': $PIXELFORGE_MODERATION_POLICY, "
                   "else the shipped example policy")
    p.add_argument("--runs-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="log warnings only, not every request")
    _add_watermark_options(p)
    p.set_defaults(func=cmd_serve)


def cmd_ratings(a) -> int:
    from .serve.ratings import RatingsDB, find_evaluation, format_scores, scores
    from .runs import default_runs_dir

    path = Path(a.db) if a.db else (Path(a.runs_dir) if a.runs_dir else default_runs_dir()) / "ratings.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"no ratings database at {path}: ratings are collected by `pixelforge serve` (Compare tab)")
    rows = RatingsDB(path).rows()
    result = scores(rows, by=a.by or "model", evaluation=lambda model: find_evaluation(model, a.runs_dir))
    if a.json:
        print(json.dumps(result))
    elif a.by is None and result["left_out"]:
        # The page's default comparison pits two settings of one model: by model those ratings score
        # nothing, so without --by both tables are shown.
        by_settings = scores(rows, by="settings", evaluation=lambda model: find_evaluation(model, a.runs_dir))
        print((format_scores(result) + "\n\n" if result["scores"] else "") + format_scores(by_settings))
    else:
        print(format_scores(result))
    return 0


def add_ratings(sub):
    p = sub.add_parser(
        "ratings",
        help="scores from human ratings: Elo, Bradley-Terry strength and FID per model",
        description="Score the pairwise ratings collected by `pixelforge serve`: Elo (K=32, start 1000, in the order "
        "given) and Bradley-Terry strengths (MM algorithm), beside each model's newest FID (its evaluations.jsonl).",
        formatter_class=_Help,
    )
    p.add_argument("--db", default=None, help="ratings SQLite file (default RUNS_DIR/ratings.sqlite)")
    p.add_argument("--by", choices=("model", "settings"), default=None, help="score each model, or each model and "
                   "sampling settings (default: by model, and by settings too when ratings compare one model's settings)")
    p.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    p.add_argument("--runs-dir", default=None)
    p.set_defaults(func=cmd_ratings)
