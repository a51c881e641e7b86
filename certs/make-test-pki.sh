#!/bin/sh
# Regenerates Varti's TEST ONLY PKI: a CA and three access points, varti-a, varti-b and
# varti-c (the third party of the tests that need one), each with a signing, an
# encryption and a TLS certificate, valid 10 years, plus the message keys of the AS4 2.0
# profiles (Ed25519 signing + X25519 key agreement, and ECDSA P-256 signing + ECDH-ES P-256
# key agreement), and RSA-2048 message keys for AS4 1.15 at the policy's minimum size.
# The private keys are committed on purpose: they protect nothing. Never use them in
# production; see README.md in this directory.
#
# Usage: certs/make-test-pki.sh [--keep-existing] [OUT_DIR]
#   (run from anywhere; writes next to this script unless OUT_DIR is given)
#   --keep-existing  only create the files that are missing, issued by the existing CA
#                    (how keys added to the script reach an already committed PKI without
#                    replacing the certificates partners and tests already use)
# `varti serve` on its embedded defaults serves as varti-a: certs/varti-a/tls.*.pem, and
# trusts client certificates issued by certs/ca.cert.pem.
set -eu
keep=no
if [ "${1:-}" = "--keep-existing" ]; then
  keep=yes
  shift
fi
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
[agree]
basicConstraints = critical,CA:FALSE
keyUsage = critical,keyAgreement
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
if [ "$keep" = no ] || [ ! -f ca.cert.pem ] || [ ! -f ca.key.pem ]; then
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days $DAYS \
    -keyout ca.key.pem -out ca.cert.pem \
    -subj "/C=EU/O=Varti TEST ONLY/CN=Varti Test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
fi

# issue AP FILE EXTENSIONS OU KEYGEN...: a key FILE.key.pem made by the openssl genpkey
# arguments KEYGEN, and its certificate FILE.cert.pem issued by the CA.
serial=1000
issue() {
  ap=$1 file=$2 ext=$3 ou=$4
  shift 4
  serial=$((serial + 1))
  if [ "$keep" = yes ] && [ -f "$ap/$file.key.pem" ] && [ -f "$ap/$file.cert.pem" ]; then
    return 0
  fi
  # A random serial when adding to an existing PKI: the numbered ones may be taken.
  if [ "$keep" = yes ]; then
    sn="0x$(openssl rand -hex 8)"
  else
    sn=$serial
  fi
  openssl genpkey "$@" -out "$ap/$file.key.pem" 2>/dev/null
  case "$ext" in
    agree)
      # A key-agreement key (X25519, or the ECDH use of P-256) is certified without a
      # self-signed request: the request is signed by a throw-away key, and the CA puts
      # the agreement key into the certificate (-force_pubkey).
      tmp=$(mktemp)
      openssl genpkey -algorithm ed25519 -out "$tmp"
      openssl pkey -in "$ap/$file.key.pem" -pubout -out "$ap/$file.pub.pem"
      openssl req -new -key "$tmp" -out "$ap/$file.csr" \
        -subj "/C=EU/O=Varti TEST ONLY/OU=$ou/CN=$ap"
      AP=$ap openssl x509 -req -sha256 -days $DAYS -in "$ap/$file.csr" \
        -force_pubkey "$ap/$file.pub.pem" \
        -CA ca.cert.pem -CAkey ca.key.pem -set_serial "$sn" \
        -extfile "$CONF" -extensions "$ext" -out "$ap/$file.cert.pem"
      rm -f "$tmp" "$ap/$file.pub.pem"
      ;;
    *)
      openssl req -new -key "$ap/$file.key.pem" -out "$ap/$file.csr" \
        -subj "/C=EU/O=Varti TEST ONLY/OU=$ou/CN=$ap"
      AP=$ap openssl x509 -req -sha256 -days $DAYS -in "$ap/$file.csr" \
        -CA ca.cert.pem -CAkey ca.key.pem -set_serial "$sn" \
        -extfile "$CONF" -extensions "$ext" -out "$ap/$file.cert.pem"
      ;;
  esac
  rm "$ap/$file.csr"
}

RSA="-algorithm rsa -pkeyopt rsa_keygen_bits:3072"
RSA2048="-algorithm rsa -pkeyopt rsa_keygen_bits:2048"
P256="-algorithm ec -pkeyopt ec_paramgen_curve:P-256 -pkeyopt ec_param_enc:named_curve"
for ap in varti-a varti-b varti-c; do
  mkdir -p "$ap"
  # AS4 1.15 (RSA) message keys and the TLS key.
  # shellcheck disable=SC2086
  issue "$ap" sign sign sign $RSA
  # shellcheck disable=SC2086
  issue "$ap" enc enc enc $RSA
  # shellcheck disable=SC2086
  issue "$ap" tls tls tls $RSA
  # AS4 2.0 message keys: EdDSA profile, then the ECDSA alternative.
  issue "$ap" sign-ed25519 sign sign-ed25519 -algorithm ed25519
  issue "$ap" enc-x25519 agree enc-x25519 -algorithm x25519
  # shellcheck disable=SC2086
  issue "$ap" sign-p256 sign sign-p256 $P256
  # shellcheck disable=SC2086
  issue "$ap" enc-p256 agree enc-p256 $P256
  # AS4 1.15 message keys of the smallest size the key policy accepts (the exchange
  # benchmark's RSA-2048 row).
  # shellcheck disable=SC2086
  issue "$ap" sign-rsa2048 sign sign-rsa2048 $RSA2048
  # shellcheck disable=SC2086
  issue "$ap" enc-rsa2048 enc enc-rsa2048 $RSA2048
done
echo "test PKI written to $(pwd)"
