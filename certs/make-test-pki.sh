#!/usr/bin/env bash
# Creates a local TEST PKI for trying Varti out: never use these keys in production.
#
#   certs/make-test-pki.sh [OUT_DIR]        (default: the directory of this script)
#
# Writes, in OUT_DIR:
#   ca.crt, ca.key                 a test CA (10 years)
#   blue-tls.crt/.key              TLS certificate of access point "blue" (localhost, 127.0.0.1;
#   red-tls.crt/.key               server and client auth), and of access point "red"
#   blue-sign.crt/.key             message-signing/encryption certificate (RSA 2048) of
#   red-sign.crt/.key              each access point (WS-Security)
#   tls.crt, tls.key, client-ca.crt  copies for `varti serve` on its embedded defaults
#                                  (it serves as "blue"; client certificates from ca.crt)
# Existing files are overwritten. Needs the openssl command line tool.
set -euo pipefail
out="${1:-$(cd "$(dirname "$0")" && pwd)}"
mkdir -p "$out"
cd "$out"
umask 077
days=3650
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
  -days "$days" -subj "/O=Varti test PKI/CN=Varti test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout ca.key -out ca.crt 2>/dev/null

# issue NAME KEYSPEC EXTENSIONS
issue() {
  local name="$1" keyspec="$2" ext="$3"
  # shellcheck disable=SC2086
  openssl req -new -newkey $keyspec -nodes -subj "/O=Varti test PKI/CN=$name" \
    -keyout "$name.key" -out "$tmp/$name.csr" 2>/dev/null
  printf '%b' "$ext" > "$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days "$days" -extfile "$tmp/$name.ext" \
    -out "$name.crt" 2>/dev/null
}

tls_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n'
sign_ext='basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment\n'
for ap in blue red; do
  issue "$ap-tls" "ec -pkeyopt ec_paramgen_curve:P-256" "$tls_ext"
  issue "$ap-sign" "rsa:2048" "$sign_ext"
done

cp blue-tls.crt tls.crt
cp blue-tls.key tls.key
cp ca.crt client-ca.crt
chmod 600 ./*.key
chmod 644 ./*.crt
echo "test PKI written to $out (TEST KEYS ONLY)"
