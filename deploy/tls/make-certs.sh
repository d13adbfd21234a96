#!/usr/bin/env bash
# Make a local CA and certificates for TLS and mutual TLS between logmesh's clients and servers, for tests
# and the demo. Not for production: use your organisation's CA (or cert-manager) there.
#
# usage: deploy/tls/make-certs.sh [OUT_DIR] [EXTRA_SAN ...]
#   OUT_DIR    where to write (default var/tls); existing files are kept, so re-running is a no-op
#   EXTRA_SAN  more subjectAltNames for the server certificate, e.g. DNS:scorer.prod IP:10.0.0.5
# writes: ca.pem ca.key            the CA (clients trust ca.pem; servers verify client certs against it)
#         server.pem server.key    a server certificate for localhost, 127.0.0.1, ::1, embedder, scorer
#         client.pem client.key    a client certificate for mutual TLS (CN=logmesh-client)
# then:   logmesh serve scorer --tls-cert OUT/server.pem --tls-key OUT/server.key [--tls-client-ca OUT/ca.pem]
#         LOGMESH_TLS_CA=OUT/ca.pem [LOGMESH_TLS_CERT=OUT/client.pem LOGMESH_TLS_KEY=OUT/client.key] logmesh score ...
set -euo pipefail
OUT="${1:-var/tls}"
shift || true
DAYS="${LOGMESH_TLS_DAYS:-825}"
command -v openssl >/dev/null || { echo "make-certs: openssl not found: install it (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$OUT"
cd "$OUT"
umask 077

if [[ ! -s ca.pem ]]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days "$DAYS" -sha256 \
    -subj "/CN=logmesh local CA $(date -u +%Y%m%d%H%M%S)-$RANDOM" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

sign() {  # name cn eku san
  local name="$1" cn="$2" eku="$3" san="$4"
  [[ -s "$name.pem" ]] && return 0
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$cn" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n%s' \
    "$eku" "${san:+subjectAltName=$san}" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" -days "$DAYS" \
    -sha256 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

SAN="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:embedder,DNS:scorer"
for extra in "$@"; do SAN="$SAN,$extra"; done
sign server "logmesh-server" serverAuth "$SAN"
sign client "logmesh-client" clientAuth ""
chmod 644 ca.pem server.pem client.pem
echo "make-certs: CA, server and client certificates in $(pwd)"
