"""The `pixelforge keys` and `pixelforge provenance` commands: signing keys and C2PA manifest verification."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .cli import _Help


def cmd_keys_create(a) -> int:
    from .provenance.keys import create_keys, default_keys_dir

    files = create_keys(Path(a.dir) if a.dir else default_keys_dir(), a.name, force=a.force)
    print(f"signing certificate {files.cert} (key {files.key}, mode 0600)\n"
          f"local CA            {files.ca_cert} (key {files.ca_key}, mode 0600)\n"
          f"verifiers trust images signed with it by `pixelforge provenance verify IMAGE --trust {files.ca_cert}`")
    return 0


def add_keys(sub) -> None:
    p = sub.add_parser("keys", help="signing keys for the C2PA manifests on generated images (create)")
    ksub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    c = ksub.add_parser("create", help="make a local CA and an ES256 signing certificate it issued",
                        description="Make a local certificate authority and an ES256 signing certificate issued by "
                        "it (C2PA refuses a lone self-signed signer). Private keys are written with mode 0600. "
                        "The CA certificate NAME-ca.pem is what verifiers pass as --trust (docs/provenance.md).",
                        formatter_class=_Help)
    c.add_argument("--dir", default=None, metavar="DIR", help="where the keys go (default: $PIXELFORGE_HOME/keys, "
                   "else $XDG_CONFIG_HOME/pixelforge/keys, else ~/.config/pixelforge/keys)")
    c.add_argument("--name", default="signing", help="the key's name: files NAME.pem, NAME.key, NAME-ca.pem, NAME-ca.key")
    c.add_argument("--force", action="store_true", help="replace an existing key of that name")
    c.set_defaults(func=cmd_keys_create)


def _describe(r, *, trust_given: bool) -> str:
    """A report as a few human lines."""
    if not r.manifest:
        wm = r.watermark or {}
        said = wm.get("message") if not wm.get("available") else _watermark_words(wm["result"])
        return f"{r.path}: no C2PA manifest (re-encoding or editing an image removes it); {said}"
    lines = [f"{r.path}: manifest {r.state}" + {
        "Trusted": " (signature and content hashes check; the signer chains to a trusted CA)",
        "Valid": " (signature and content hashes check; " + ("the signer does not chain to a CA in --trust, so it "
                  "is not trusted)" if trust_given else "whether to trust the signer: --trust CA.pem)"),
    }.get(r.state or "", "")]
    lines += [f"  problem: {p}" for p in r.problems]
    if r.generator:
        lines.append(f"  generator: {r.generator}")
    if r.signer:
        lines.append(f"  signed by: {r.signer}")
    if r.ai_generated is not None:
        kinds = ", ".join(f"{x.get('action')} {str(x.get('digitalSourceType', '')).rsplit('/', 1)[-1]}".strip()
                          for x in r.actions)
        lines.append(f"  AI-generated: {'yes' if r.ai_generated else 'no'}" + (f" ({kinds})" if kinds else ""))
    if r.model:
        lines.append(f"  model: {r.model.get('name')} ({r.model.get('family')}), weights sha256 "
                     f"{r.model.get('weights_sha256')}")
    if r.settings:
        lines.append("  settings: " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(r.settings.items())))
    return "\n".join(lines)


def _watermark_words(d: dict) -> str:
    """A watermark detection record (provenance.marks.detection_record) as words."""
    if d.get("too_small"):
        return "too small to carry a watermark"
    if not d["detected"]:
        return f"no watermark found (score {d['score']:.1f})"
    if d["payload"] is None:
        return f"watermark found, payload unreadable (score {d['score']:.1f})"
    return (f"watermark found: payload {d['payload']} (model id {d['model_id']}, generation id {d['generation_id']}; "
            f"score {d['score']:.1f})")


def cmd_provenance_verify(a) -> int:
    from .provenance.c2pa_manifest import _trust_anchors, verify

    trust_required = a.trust is not None
    if trust_required:
        _trust_anchors(a.trust)  # a bad --trust file stops here, once, not once per image
    status, records = 0, []
    for image in a.images:  # every file is reported; one that cannot be read does not stop the others
        try:
            r = verify(image, trust=a.trust)
        except (ValueError, FileNotFoundError) as e:
            status = 2
            records.append({"path": image, "error": str(e)})
            if not a.json:
                print(f"{image}: error: {e}", file=sys.stderr)
            continue
        passed = r.passed(trust_required=trust_required)
        status = max(status, 0 if passed else 1)
        records.append({**r.to_dict(), "passed": passed})
        if not a.json:
            print(_describe(r, trust_given=trust_required), flush=True)
    if a.json:
        print(json.dumps(records))
    return status


def add_provenance(sub) -> None:
    p = sub.add_parser("provenance", help="provenance tools (verify an image's C2PA manifest)")
    psub = p.add_subparsers(dest="provenance_command", metavar="SUBCOMMAND")
    v = psub.add_parser("verify", help="what an image's C2PA manifest says and whether its signature holds",
                        description="Report, per image, whether it carries a C2PA manifest, its validation state "
                        "(Trusted, Valid or Invalid, with the reasons), the generator, model, settings and whether "
                        "it is marked AI-generated; for an image without a manifest, what its watermark says. "
                        "Offline. Every IMAGE is reported, whatever the others are. Exit status 0: every image "
                        "passed (Trusted with --trust, else Valid or Trusted); 1: one has no manifest, an Invalid "
                        "one, or one not trusted; 2: bad input (a file missing or not a readable image: an error "
                        "line naming it, or with --json an entry {path, error}), whatever the others gave.",
                        formatter_class=_Help)
    v.add_argument("images", nargs="+", metavar="IMAGE")
    v.add_argument("--trust", default=None, metavar="CA.pem", help="PEM file of CA certificates to trust (the "
                   "NAME-ca.pem of `pixelforge keys create`)")
    v.add_argument("--json", action="store_true", help="print a JSON list with one report per image")
    v.set_defaults(func=cmd_provenance_verify)
