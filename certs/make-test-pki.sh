#!/bin/sh
# Regenerates Varti's TEST ONLY PKI: a CA and two access points, varti-a and varti-b,
# each with a signing, an encryption and a TLS certificate, valid 10 years.
# The private keys are committed on purpose: they protect nothing. Never use them in
# production; see README.md in this directory.
#
# Usage: certs/make-test-pki.sh [OUT_DIR]
#   (run from anywhere; writes next to this script unless OUT_DIR is given)
# `varti serve` on its embedded defaults serves as varti-a: certs/varti-a/tls.*.pem, and
# trusts client certificates issued by certs/ca.cert.pem.
set -eu
out="${1:-$(dirname "$0")}"
mkdir -p "$out"
cd "$out"
DAYS=3650
CONF=$(mktemp)
trap 'rm -f "$CONF"' EXIT

cat >"$CONF" <<'CNF'
[sign]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,nonRepudiation
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[enc]
basicConstraints = critical,CA:FALSE
keyUsage = critical,keyEncipherment,dataEncipherment
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[tls]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:${ENV::AP}.localhost,DNS:localhost,IP:127.0.0.1
CNF

# The CA (OpenSSL 1.1.1 or newer for -addext).
openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days $DAYS \
  -keyout ca.key.pem -out ca.cert.pem \
  -subj "/C=EU/O=Varti TEST ONLY/CN=Varti Test CA" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign

serial=1000
for ap in varti-a varti-b; do
  mkdir -p "$ap"
  for use in sign enc tls; do
    serial=$((serial + 1))
    openssl req -new -newkey rsa:3072 -nodes -sha256 \
      -keyout "$ap/$use.key.pem" -out "$ap/$use.csr" \
      -subj "/C=EU/O=Varti TEST ONLY/OU=$use/CN=$ap"
    AP=$ap openssl x509 -req -sha256 -days $DAYS -in "$ap/$use.csr" \
      -CA ca.cert.pem -CAkey ca.key.pem -set_serial $serial \
      -extfile "$CONF" -extensions "$use" -out "$ap/$use.cert.pem"
    rm "$ap/$use.csr"
  done
done
echo "test PKI written to $(pwd)"
