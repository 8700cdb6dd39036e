#!/bin/sh
# NATS role credentials for Kubernetes: a random password for every role of the shipped accounts
# config (shared/ttp_runtime/nats_accounts.conf), and the Secrets that carry them.
#
#   deploy/kubernetes/make-nats-credentials.sh [DIR]    (default: deploy/kubernetes/credentials,
#                                                        ignored by git)
#
# Writes into DIR, mode 0600 (the manifests are rendered by `kubectl create --dry-run=client`,
# which needs no cluster):
#   nats-secret.yaml        Secret ttp-nats-server in namespace nats: every role's password,
#                           as TTP_NATS_PASSWORD_<ROLE>, the server's environment
#                           (values-prod.yaml)
#   ttp-rulebus-secrets.yaml
#                           Secrets ttp-nats-master, ttp-nats-worker and ttp-nats-console in
#                           ttp-rulebus, key `password`: each workload gets its own role's
#                           and no other
#   <role>.env              TTP_NATS_URL/USER/PASSWORD/INBOX_PREFIX of one role, to hand to
#                           whoever holds it (producers, consumers, operators, viewers, admin);
#                           these never go into the cluster
# Apply the two manifests (deploy/kubernetes/README.md), then keep DIR in your secret manager
# or delete it. A password already in DIR/<role>.env is kept: run it again after adding a
# role; to rotate one, delete its file first (docs/security.md). KUBECTL overrides the kubectl
# binary, NATS_URL the URL written into the .env files.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
accounts="$here/../../shared/ttp_runtime/nats_accounts.conf"
out=${1:-"$here/credentials"}
kubectl=${KUBECTL:-kubectl}
nats_url=${NATS_URL:-tls://nats.nats.svc.cluster.local:4222}
umask 077

# The roles are the password variables the accounts config reads: nothing to keep in step.
roles=$(grep -o '\$TTP_NATS_PASSWORD_[A-Z0-9_]*' "$accounts" | sed 's/^\$TTP_NATS_PASSWORD_//' \
    | tr 'A-Z' 'a-z' | sort -u)
if [ -z "$roles" ]; then
    echo "no \$TTP_NATS_PASSWORD_<ROLE> variable in $accounts" >&2
    exit 1
fi

mkdir -p "$out"
chmod 0700 "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for role in $roles; do
    file="$out/$role.env"
    password=""
    if [ -f "$file" ]; then
        password=$(sed -n 's/^TTP_NATS_PASSWORD=//p' "$file" | tail -n 1)
    fi
    if [ -z "$password" ]; then
        # nats-server reads a variable's value as config, not as a plain string ("-1x" is a
        # number, "12-x" a date): a letter followed by hex digits is always a string.
        password="p$(openssl rand -hex 24)"
    fi
    if ! printf '%s' "$password" | grep -Eq '^[A-Za-z][A-Za-z0-9]*$'; then
        echo "$file: the password must be a letter followed by letters and digits" >&2
        exit 1
    fi
    {
        echo "# ttp-rulebus NATS credentials of the $role role"
        echo "TTP_NATS_URL=$nats_url"
        echo "TTP_NATS_USER=$role"
        echo "TTP_NATS_PASSWORD=$password"
        echo "TTP_NATS_INBOX_PREFIX=_INBOX_$role"
    } > "$file.tmp"
    mv "$file.tmp" "$file"
    # Files, not --from-literal: a password on a command line is visible to `ps`.
    printf '%s' "$password" > "$work/$role"
done

server_args=""
for role in $roles; do
    variable=TTP_NATS_PASSWORD_$(printf '%s' "$role" | tr 'a-z' 'A-Z')
    server_args="$server_args --from-file=$variable=$work/$role"
done
# shellcheck disable=SC2086 # one argument per role, no spaces in them
"$kubectl" create secret generic ttp-nats-server --namespace nats $server_args \
    --dry-run=client -o yaml > "$out/nats-secret.yaml"

: > "$out/ttp-rulebus-secrets.yaml"
for role in master worker console; do
    echo "---" >> "$out/ttp-rulebus-secrets.yaml"
    "$kubectl" create secret generic "ttp-nats-$role" --namespace ttp-rulebus \
        --from-file="password=$work/$role" --dry-run=client -o yaml \
        >> "$out/ttp-rulebus-secrets.yaml"
done

echo "wrote $out: nats-secret.yaml, ttp-rulebus-secrets.yaml and one .env per role"
