#!/bin/sh
# Development certificates for compose.tls.yaml: a CA, the NATS server's certificate (names
# nats, localhost, 127.0.0.1) and one client certificate the services share.
#
#   deploy/nats/make-dev-certs.sh [DIR]     (default: deploy/nats/tls, ignored by git)
#
# For development only: the keys are readable by the containers' user (10001), and the CA key
# stays next to them. Production certificates come from your PKI or cert-manager.
set -eu
dir=${1:-"$(dirname "$0")/tls"}
days=${TTP_DEV_CERT_DAYS:-825}
mkdir -p "$dir"
cd "$dir"

openssl req -x509 -newkey rsa:2048 -nodes -days "$days" -subj "/CN=ttp-rulebus dev CA" \
    -keyout ca-key.pem -out ca.pem 2>/dev/null

issue() { # name, extensions
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$1-key.pem" -out "$1.csr" \
        2>/dev/null
    printf '%s\n' "$2" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -days "$days" -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
issue server "subjectAltName=DNS:nats,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue client "extendedKeyUsage=clientAuth"

# The services run as uid 10001 and nats as its own user: both must read their files.
chmod 0644 ca.pem server.pem client.pem server-key.pem client-key.pem
chmod 0600 ca-key.pem
echo "wrote $(pwd): ca.pem server.pem server-key.pem client.pem client-key.pem"
