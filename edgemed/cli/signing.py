"""``keygen`` and ``sign``: ed25519 bundle signing (edgemed.signing; ``signing`` extra)."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = sub.add_parser("keygen", help="create an ed25519 key pair for signing bundles")
    keygen.add_argument(
        "--out", required=True, help="directory for private_key.pem (0600) and public_key.pem"
    )
    keygen.set_defaults(handler=_cmd_keygen)
    sign = sub.add_parser("sign", help="sign a bundle's bundle.json (writes bundle.sig)")
    sign.add_argument("bundle", help="bundle directory")
    sign.add_argument("--key", required=True, help="private key PEM (from edgemed keygen)")
    sign.set_defaults(handler=_cmd_sign)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from edgemed.signing import generate_keypair, key_fingerprint, load_public_key

    private, public = generate_keypair(args.out)
    print(f"wrote {private} (private, mode 0600: keep it secret and off devices)")
    print(f"wrote {public} (public: set EDGEMED_TRUSTED_KEY to it where bundles load)")
    print(f"  ed25519 key {key_fingerprint(load_public_key(public))[:16]}")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from edgemed.bundle import sign_bundle
    from edgemed.signing import key_fingerprint, load_private_key

    key = load_private_key(args.key)
    sig = sign_bundle(args.bundle, key)
    print(f"signed {args.bundle}: wrote {sig} (ed25519 key {key_fingerprint(key)[:16]})")
    return 0
