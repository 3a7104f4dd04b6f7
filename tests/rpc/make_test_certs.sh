#!/bin/sh
# Writes throwaway TLS material for tests into DIR (created): a CA (ca.pem), a server certificate
# for 127.0.0.1 / localhost signed by it (server.pem, server.key), a client certificate signed by
# it (client.pem, client.key), and an unrelated CA with a server certificate of its own
# (other_ca.pem, other_server.pem, other_server.key). EC P-256 keys: quick to make.
# Usage: make_test_certs.sh DIR
set -eu
dir=$1
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {  # name
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=tandem test $1" -days 2 -out "$1.pem" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
}
leaf() {  # name ca usage
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=tandem test $1" -out "$1.csr"
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' \
    "$3" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca
ca other_ca
leaf server ca serverAuth,clientAuth
leaf client ca clientAuth
leaf other_server other_ca serverAuth,clientAuth
