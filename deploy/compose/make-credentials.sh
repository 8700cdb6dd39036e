#!/bin/sh
# NATS credentials for compose.yaml: a random password for every role of the shipped accounts
# config (shared/ttp_runtime/nats_accounts.conf), so no two roles share one.
#
#   deploy/compose/make-credentials.sh        (or: make compose-credentials)
#
# Writes, mode 0600 and ignored by git:
#   .env                            TTP_NATS_PASSWORD_<ROLE>=... for every role. Compose reads
#                                   it by itself: the nats service gets them all, every other
#                                   service only its own role's (compose.yaml).
#   deploy/compose/credentials/<role>.env
#                                   TTP_NATS_URL/USER/PASSWORD/INBOX_PREFIX of one role, for
#                                   ttpctl on the host (`ttpctl --env-file FILE ...`).
# and, in .env too, the web console's CONSOLE_DEV_PASSWORD (the password of its dev login
# `dev`, an operator, which compose's console-users one-shot writes into the console's users
# file at every `up`) and CONSOLE_SESSION_SECRET (the key that signs its session cookies, so
# a login outlives a console restart); the script prints the console's URL and login.
# A password already in .env is kept, other lines of .env too; run it again after adding a
# role. To rotate one, delete its line from .env, run this again, then `docker compose up -d`
# (docs/security.md). ENV_FILE, CREDENTIALS_DIR and NATS_URL override the defaults.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
accounts="$repo/shared/ttp_runtime/nats_accounts.conf"
env_file=${ENV_FILE:-"$repo/.env"}
credentials_dir=${CREDENTIALS_DIR:-"$here/credentials"}
nats_url=${NATS_URL:-nats://localhost:4222}
umask 077

# The roles are the password variables the accounts config reads: nothing to keep in step.
roles=$(grep -o '\$TTP_NATS_PASSWORD_[A-Z0-9_]*' "$accounts" | sed 's/^\$TTP_NATS_PASSWORD_//' \
    | sort -u)
if [ -z "$roles" ]; then
    echo "no \$TTP_NATS_PASSWORD_<ROLE> variable in $accounts" >&2
    exit 1
fi

touch "$env_file"
chmod 0600 "$env_file"
# Appending to a last line without its newline would glue two settings together.
if [ -s "$env_file" ] && [ -n "$(tail -c 1 "$env_file")" ]; then
    echo >> "$env_file"
fi

mkdir -p "$credentials_dir"
chmod 0700 "$credentials_dir"
created=""
for ROLE in $roles; do
    variable="TTP_NATS_PASSWORD_$ROLE"
    password=$(sed -n "s/^$variable=//p" "$env_file" | tail -n 1)
    if [ -z "$password" ]; then
        # nats-server reads a variable's value as config, not as a plain string ("-1x" is a
        # number, "12-x" a date): a letter followed by hex digits is always a string.
        password="p$(openssl rand -hex 24)"
        printf '%s=%s\n' "$variable" "$password" >> "$env_file"
        created="$created $ROLE"
    fi
    if ! printf '%s' "$password" | grep -Eq '^[A-Za-z][A-Za-z0-9]*$'; then
        echo "$env_file: $variable must be a letter followed by letters and digits" \
            "(nats-server would read anything else as config); delete the line and run" \
            "this again" >&2
        exit 1
    fi
    role=$(printf '%s' "$ROLE" | tr 'A-Z' 'a-z')
    file="$credentials_dir/$role.env"
    {
        echo "# ttp-rulebus NATS credentials of the $role role (compose, from the host)"
        echo "TTP_NATS_URL=$nats_url"
        echo "TTP_NATS_USER=$role"
        echo "TTP_NATS_PASSWORD=$password"
        echo "TTP_NATS_INBOX_PREFIX=_INBOX_$role"
    } > "$file.tmp"
    mv "$file.tmp" "$file"
done

# The console's secrets: letters and digits, like the passwords above (compose reads them).
for variable in CONSOLE_DEV_PASSWORD CONSOLE_SESSION_SECRET; do
    value=$(sed -n "s/^$variable=//p" "$env_file" | tail -n 1)
    if [ -z "$value" ]; then
        case $variable in
            CONSOLE_DEV_PASSWORD) value="p$(openssl rand -hex 10)" ;;
            *) value="k$(openssl rand -hex 32)" ;;
        esac
        printf '%s=%s\n' "$variable" "$value" >> "$env_file"
        created="$created $variable"
    fi
    if ! printf '%s' "$value" | grep -Eq '^[A-Za-z0-9]{8,}$'; then
        echo "$env_file: $variable must be 8 or more letters and digits; delete the line and" \
            "run this again" >&2
        exit 1
    fi
    if [ "$variable" = CONSOLE_DEV_PASSWORD ]; then
        console_password=$value
    fi
done

echo "NATS role passwords in $env_file (new:${created:- none}); per-role client settings" \
    "in $credentials_dir"
echo "Console (after docker compose up): http://127.0.0.1:8090, user dev (operator)," \
    "password $console_password"
