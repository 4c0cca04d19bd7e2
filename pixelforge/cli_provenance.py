"""The `pixelforge keys` and `pixelforge provenance` commands: signing keys and C2PA manifest verification."""

from __future__ import annotations

import json
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
        said = wm.get("message") if not wm.get("available") else f"watermark: {wm.get('result')}"
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


def cmd_provenance_verify(a) -> int:
    from .provenance.c2pa_manifest import verify

    reports = [verify(image, trust=a.trust) for image in a.images]
    trust_required = a.trust is not None
    if a.json:
        print(json.dumps([{**r.to_dict(), "passed": r.passed(trust_required=trust_required)} for r in reports]))
    else:
        print("\n".join(_describe(r, trust_given=trust_required) for r in reports))
    return 0 if all(r.passed(trust_required=trust_required) for r in reports) else 1


def add_provenance(sub) -> None:
    p = sub.add_parser("provenance", help="provenance tools (verify an image's C2PA manifest)")
    psub = p.add_subparsers(dest="provenance_command", metavar="SUBCOMMAND")
    v = psub.add_parser("verify", help="what an image's C2PA manifest says and whether its signature holds",
                        description="Report, per image, whether it carries a C2PA manifest, its validation state "
                        "(Trusted, Valid or Invalid, with the reasons), the generator, model, settings and whether "
                        "it is marked AI-generated; for an image without a manifest, what its watermark says. "
                        "Offline. Exit status 0: every image passed (Trusted with --trust, else Valid or "
                        "Trusted); 1: one has no manifest, an Invalid one, or one not trusted; 2: bad input.",
                        formatter_class=_Help)
    v.add_argument("images", nargs="+", metavar="IMAGE")
    v.add_argument("--trust", default=None, metavar="CA.pem", help="PEM file of CA certificates to trust (the "
                   "NAME-ca.pem of `pixelforge keys create`)")
    v.add_argument("--json", action="store_true", help="print a JSON list with one report per image")
    v.set_defaults(func=cmd_provenance_verify)
