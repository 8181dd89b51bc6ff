#!/usr/bin/env python3
"""An identity provider's signer for the tests, built on PyJWT (never on the sidecar's code).

  sign.py token < {"alg": "RS256", "key": "tests/keys/rsa.pem", "headers": {...}, "claims": {...}}
      prints the compact JWS ("alg": "none" with no key signs nothing);
  sign.py jwks KID=PEM [KID=PEM ...]
      prints the JWKS of those keys' public halves.
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def public_jwk(kid, path):
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    public = key.public_key()
    for algorithm in (RSAAlgorithm, ECAlgorithm, OKPAlgorithm):
        try:
            jwk = json.loads(algorithm.to_jwk(public))
            break
        except Exception:  # not this key type
            continue
    else:
        raise SystemExit(f"{path}: unsupported key")
    jwk["kid"] = kid
    jwk["use"] = "sig"
    return jwk


def main():
    if sys.argv[1:2] == ["jwks"]:
        keys = [public_jwk(*arg.split("=", 1)) for arg in sys.argv[2:]]
        print(json.dumps({"keys": keys}))
        return
    spec = json.load(sys.stdin)
    key = None
    if spec.get("key"):
        with open(spec["key"], "rb") as f:
            key = f.read()
    print(jwt.encode(spec["claims"], key, algorithm=spec["alg"], headers=spec.get("headers")))


if __name__ == "__main__":
    main()
