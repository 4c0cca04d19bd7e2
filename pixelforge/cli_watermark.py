"""`pixelforge watermark` (embed, detect) and `pixelforge moderation check`, and the one-line-per-file report both
detection commands print."""

from __future__ import annotations

import json
import sys

from .cli import UNMARKABLE_STATUS, _float_range, _Help


def cmd_moderation_check(a) -> int:
    from .provenance.moderation import resolve_policy

    policy = resolve_policy(a.policy or "default")
    if policy is None:
        raise ValueError("--policy none: there is no policy to check against; name a policy file")
    decision = policy.check(a.prompt)
    if a.json:
        print(json.dumps({"allowed": decision.allowed, "kind": decision.kind, "rule": decision.rule,
                          "reason": decision.reason, "policy": str(policy.path)}))
    elif decision.allowed:
        print(f"allowed by {policy.name}")
    else:
        print(f"refused by {policy.name}: rule {decision.rule} ({decision.reason})")
    return 0 if decision.allowed else 1


def add_moderation(sub):
    p = sub.add_parser("moderation", help="prompt moderation tools (check)")
    msub = p.add_subparsers(dest="moderation_command", metavar="SUBCOMMAND")
    c = msub.add_parser("check", help="try a moderation policy on a prompt: exit status 0 allowed, 1 refused",
                        description="Check PROMPT against a moderation policy (TOML; docs/moderation.md) and say "
                        "which rule refuses it, if any. Exit status 0: allowed; 1: refused; 2: a bad policy file.",
                        formatter_class=_Help)
    c.add_argument("prompt", metavar="PROMPT")
    c.add_argument("--policy", default=None, metavar="FILE", help="the policy file (default: "
                   "$PIXELFORGE_MODERATION_POLICY, else the shipped example policy)")
    c.add_argument("--json", action="store_true", help="print the decision as one JSON object")
    c.set_defaults(func=cmd_moderation_check)


def add_watermark(sub):
    from .provenance.watermark import DEFAULT_PSNR, DEFAULT_VERIFY_MIN_PSNR, PSNR_RANGE, READBACK_MIN_PSNR

    p = sub.add_parser("watermark", help="embed or detect the invisible watermark in any image (embed, detect)")
    wsub = p.add_subparsers(dest="watermark_command", metavar="SUBCOMMAND")
    e = wsub.add_parser("embed", help="mark an image (any image, not only generated ones)", formatter_class=_Help,
                        description="Embed the invisible watermark (docs/watermark.md) into IMAGE and write OUT (its "
                        "format from the extension; JPEG at quality 95). The payload is 32 bits: by default the first 32 "
                        "bits of the input file's SHA-256. Exit status 0: marked, and the mark reads back; "
                        f"{UNMARKABLE_STATUS}: the mark could not be read back on this image even at the strongest "
                        "strength tried (a near-binary or very noisy image), and nothing is written; 2: bad input.")
    e.add_argument("image", metavar="IMAGE")
    e.add_argument("-o", "--out", required=True, metavar="OUT", help="the marked image (.png, .jpg, .webp, ...)")
    e.add_argument("--payload", default=None, help="32 bits to embed: 8 hex digits (0x optional)")
    e.add_argument("--key", default=None, help="user key (default $PIXELFORGE_WATERMARK_KEY, else the project's key alone)")
    e.add_argument("--psnr", type=float, default=DEFAULT_PSNR,
                   help=f"strength as the marked image's PSNR in dB, {PSNR_RANGE[0]:g}..{PSNR_RANGE[1]:g} (higher: fainter)")
    e.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    e.add_argument("--no-verify", dest="verify", action="store_false",
                   help="mark once at --psnr. By default the mark is checked after JPEG q50 and made stronger, down "
                   f"to {DEFAULT_VERIFY_MIN_PSNR:g} dB, where it does not survive it, and made stronger, down to "
                   f"{READBACK_MIN_PSNR:g} dB, where it does not read back at all; either way a mark that does not "
                   f"read back is not written (exit status {UNMARKABLE_STATUS})")
    e.set_defaults(func=cmd_watermark_embed)
    d = wsub.add_parser("detect", help="look for the mark in images; --json prints one JSON object per image",
                        formatter_class=_Help, description="Look for the invisible watermark in each IMAGE and print "
                        "whether it is there, its score (clean images score about 3.5 to 6) and the payload. Exit status 0, or 2 where a "
                        "file could not be read (the others are still checked).")
    d.add_argument("images", nargs="+", metavar="IMAGE")
    d.add_argument("--json", action="store_true", help="one JSON object per line and image: file, detected, score, "
                   "payload, payload_rejected, model_id, generation_id, cell_size, angle, too_small (a side under 32 pixels: "
                   "no mark can be there) (or file and error)")
    d.add_argument("--key", default=None, help="user key (default $PIXELFORGE_WATERMARK_KEY, else the project's key alone)")
    d.add_argument("--threshold", type=_float_range(0, above_lo=True), default=None,
                   help="the score at and above which an image counts as marked (default: by the image's size, "
                   "6.8 to 7.7; docs/watermark.md)")
    d.set_defaults(func=cmd_watermark_detect)


def cmd_watermark_embed(a) -> int:
    from .provenance.marks import embed_file
    from .provenance.watermark import UnmarkableImage

    try:
        out, payload = embed_file(a.image, a.out, payload=a.payload, key=a.key, psnr=a.psnr, overwrite=a.overwrite,
                                  verify=a.verify)
    except UnmarkableImage as e:
        print(f"pixelforge watermark: {e}; nothing written", file=sys.stderr)
        return UNMARKABLE_STATUS
    print(f"marked {a.image} with payload {payload:08x}: {out}")
    return 0


def report_files(paths, check, describe, *, as_json: bool) -> int:
    """Check each file and print one line per file: `check(path)` -> a record (a dict), printed as JSON with
    as_json, else as `describe(record)`; a file it refuses (ValueError) gets an error line and the others are
    still checked. Returns the exit status: 2 when any file was refused, else 0."""
    status = 0
    for path in paths:
        try:
            record = check(path)
        except ValueError as e:  # one unreadable file does not stop the others
            record, status = {"file": path, "error": str(e)}, 2
        if as_json:
            print(json.dumps(record), flush=True)
        elif "error" in record:
            print(f"{path}: error: {record['error']}", file=sys.stderr)
        else:
            print(describe(record), flush=True)
    return status


def cmd_watermark_detect(a) -> int:
    from .provenance.marks import detect_file
    from .provenance.watermark import MIN_SIDE

    def describe(record: dict) -> str:
        if record["too_small"]:
            return f"{record['file']}: too small to carry a mark (each side must be at least {MIN_SIDE} pixels)"
        found = f"marked, payload {record['payload']}" if record["detected"] else "no mark found"
        if record["payload_rejected"]:
            found = "marked, payload unreadable (a near miss of the code)"
        return f"{record['file']}: {found} (score {record['score']:.1f})"

    return report_files(a.images, lambda path: {"file": path, **detect_file(path, key=a.key, threshold=a.threshold)},
                        describe, as_json=a.json)
