#!/usr/bin/env bash
# Makes a CA and a serving certificate for the Trellis webhook Service, for installs that do not use
# the webhook's own certificate bootstrap (or for local testing of `webhook serve`).
#
#   certs/make-certs.sh [OUT_DIR] [SERVICE] [NAMESPACE]
#
# Writes ca.crt, ca.key, tls.crt, tls.key into OUT_DIR (default certs/out, git-ignored) and prints
# how to load them into the cluster. Keys are never committed.
set -euo pipefail
out=${1:-certs/out}
service=${2:-trellis-webhook}
namespace=${3:-trellis-system}
days_ca=3650
days_cert=825

mkdir -p "$out"
umask 077
cn="$service.$namespace.svc"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out/ca.key" -out "$out/ca.crt" -days "$days_ca" \
    -subj "/O=trellis/CN=trellis-webhook-ca" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out/tls.key" -out "$out/tls.csr" -subj "/O=trellis/CN=$cn" 2>/dev/null

cat > "$out/ext.cnf" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$cn,DNS:$cn.cluster.local,DNS:$service.$namespace,DNS:$service
EXT
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -out "$out/tls.crt" -days "$days_cert" -extfile "$out/ext.cnf" 2>/dev/null
rm -f "$out/tls.csr" "$out/ext.cnf" "$out/ca.srl"
openssl verify -CAfile "$out/ca.crt" "$out/tls.crt" >/dev/null

cat <<MSG
certs: wrote $out/{ca.crt,ca.key,tls.crt,tls.key} for $cn
To use them instead of the built-in bootstrap:
  kubectl -n $namespace create secret generic trellis-webhook-tls \\
      --from-file=ca.crt=$out/ca.crt --from-file=tls.crt=$out/tls.crt --from-file=tls.key=$out/tls.key
  (the webhook adopts an existing Secret and patches the caBundle from its ca.crt)
MSG
