#!/usr/bin/env bash
# Creates the Secrets the backbone reads, out of band: they are not in kustomization.yaml (so
# `kubectl apply -k` can never overwrite a real key with a placeholder) and never in git.
#
#   deploy/kubernetes/create-secrets.sh [--offline] [OUT_DIR]   # OUT_DIR default ./backbone-secrets (mode 0700)
#
# Run once per cluster before `kubectl apply -k deploy/kubernetes`, with kubectl pointed at the
# cluster and the backbone installed (`pip install .` from this repository, for `backbone keys init`
# and `backbone registry users provision`). Set NAMESPACE if not `backbone`. Each Secret's keys are
# written as files to OUT_DIR/secrets/NAME/ and the Secret created from that directory; --offline
# only writes them (no cluster: for a secret store, or the deployment rehearsal in the tests).
# A Secret that already exists is left as it is; rotate a value with
#   kubectl -n backbone create secret generic NAME --from-file=OUT_DIR/secrets/NAME --dry-run=client -o yaml | kubectl apply -f -
# OUT_DIR keeps what was generated (master keys, the roles' keyrings, passwords, the registry's users file): move
# it into your secret store and delete it here. Kafka users' passwords are not here: Strimzi writes
# them to a Secret per KafkaUser.
set -euo pipefail

offline=0
if [ "${1:-}" = "--offline" ]; then offline=1; shift; fi
ns=${NAMESPACE:-backbone}
out=${1:-./backbone-secrets}
repo=$(cd "$(dirname "$0")/../.." && pwd)
umask 077
mkdir -p "$out/secrets"

exists() {  # NAME: the Secret is in the cluster (offline: its keys are in OUT_DIR/secrets/NAME)
  if [ "$offline" -eq 1 ]; then [ -d "$out/secrets/$1" ]; else kubectl -n "$ns" get secret "$1" > /dev/null 2>&1; fi
}
secret() {  # NAME KEY=FILE...: the Secret's keys as files in OUT_DIR/secrets/NAME, then the Secret from them
  local name=$1 pair
  shift
  mkdir -p "$out/secrets/$name"
  for pair in "$@"; do cp "${pair#*=}" "$out/secrets/$name/${pair%%=*}"; done
  if [ "$offline" -eq 0 ]; then kubectl -n "$ns" create secret generic "$name" --from-file="$out/secrets/$name"; fi
}
password() {  # a random password in a file of its own (URL-safe: it goes into DSNs)
  [ -s "$out/$1.password" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(32), end="")' > "$out/$1.password"
  head -n 1 "$out/$1.password"
}
backbone_cli() {  # the charter and catalog of this checkout, nothing from the caller's environment
  env -u BACKBONE_MASTER_KEY -u BACKBONE_MASTER_KEY_FILE -u BACKBONE_KEYRING_PATH -u BACKBONE_SCHEMA_REGISTRY_USERS_FILE \
    BACKBONE_SCHEMAS_DIR="$repo/schemas" BACKBONE_AGREEMENTS_DIR="$repo/agreements" "$@"
}

# The master key encrypts the keyring: base64 of 32 random bytes.
if ! exists backbone-master-key; then
  [ -s "$out/master-key" ] || python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$out/master-key"
  secret backbone-master-key master-key="$out/master-key"
elif [ ! -s "$out/master-key" ] && [ "$offline" -eq 0 ]; then
  kubectl -n "$ns" get secret backbone-master-key -o jsonpath='{.data.master-key}' | base64 -d > "$out/master-key"
fi

# Each role its own keyring (backbone.keys.roles). The processor's (domain, encryption and checkpoint
# signing keys, under the master key above) is the only one a pod mounts: read-only in every
# processor pod. `backbone keys rotate` on this file, then replacing the Secret and restarting the
# processors, rotates keys. The operator's (its signing key only, no pseudonym key) and oversight's
# (re-identification) keyrings, each under a master key of its own, stay in OUT_DIR for the people
# who hold those roles; the operator's is mounted in the operator toolbox (toolbox.yaml) too.
if ! exists backbone-keyring; then
  backbone_cli BACKBONE_ROLE=processor BACKBONE_MASTER_KEY_FILE="$out/master-key" BACKBONE_KEYRING_PATH="$out/processor.keyring" \
    backbone keys init
  secret backbone-keyring processor.keyring="$out/processor.keyring"
fi
if [ ! -s "$out/operator.keyring" ]; then
  backbone_cli BACKBONE_ROLE=operator BACKBONE_KEYRING_PATH="$out/operator.keyring" \
    backbone keys init --new-master-key-file "$out/operator-master-key"
fi
if ! exists backbone-operator-keyring; then   # mounted in the operator toolbox only (toolbox.yaml)
  secret backbone-operator-keyring operator.keyring="$out/operator.keyring" master-key="$out/operator-master-key"
fi
if [ ! -s "$out/oversight.keyring" ] && [ -s "$out/processor.keyring" ]; then
  backbone_cli BACKBONE_ROLE=oversight BACKBONE_KEYRING_PATH="$out/oversight.keyring" \
    backbone keys init --new-master-key-file "$out/oversight-master-key" \
    --from-keyring "$out/processor.keyring" --from-master-key-file "$out/master-key"
fi

# ClickHouse's administrator `backbone` (clickhouse.yaml reads `password`; only the Job
# clickhouse-grants reads `dsn`).
if ! exists backbone-clickhouse; then
  pw=$(password clickhouse-backbone)
  printf '%s' "http://backbone:$pw@clickhouse-backbone.$ns.svc.cluster.local:8123/default" > "$out/clickhouse-backbone.dsn"
  secret backbone-clickhouse password="$out/clickhouse-backbone.password" dsn="$out/clickhouse-backbone.dsn"
fi

# A ClickHouse user per sink workload (backbone_sink_<recipient>, backbone_sink_audit): each sink
# reads its own DSN (Secret clickhouse-sink-<name>, key dsn); the Job clickhouse-grants creates the
# users from their credentials (hashes only: Secret clickhouse-sink-credentials). Passwords stay in
# OUT_DIR/clickhouse-passwords. Run again after the charter changes (new recipients get users),
# then replace clickhouse-sink-credentials and run the Job again. User names carry the database
# prefix: CLICKHOUSE_DATABASE_PREFIX here must be the ConfigMap's BACKBONE_CLICKHOUSE_DATABASE_PREFIX.
backbone_cli env BACKBONE_CLICKHOUSE_DATABASE_PREFIX="${CLICKHOUSE_DATABASE_PREFIX:-}" backbone clickhouse users provision --passwords-dir "$out/clickhouse-passwords" \
  --credentials-file "$out/clickhouse-credentials.json" --url "http://clickhouse-backbone.$ns.svc.cluster.local:8123/default"
if exists clickhouse-sink-credentials; then
  echo "clickhouse-sink-credentials exists: replace it with the new $out/clickhouse-credentials.json if the charter changed" >&2
else
  secret clickhouse-sink-credentials credentials.json="$out/clickhouse-credentials.json"
fi
for file in "$out"/clickhouse-passwords/sink-*.dsn; do
  name=$(basename "$file" .dsn)
  exists "clickhouse-$name" || secret "clickhouse-$name" dsn="$file"
done

# The registry's users (scrypt hashes only), one per agency and per backbone workload, each allowed
# to write exactly the subjects its code registers (backbone.access.registry_users), and the user
# each workload's pods send (Secret registry-<user>). Passwords stay in OUT_DIR/registry-passwords:
# hand each agency its own (README, "Joining as an agency"). Run again after the charter changes
# (new agencies get users; nobody's password changes), then replace schema-registry-users.
backbone_cli backbone registry users provision --passwords-dir "$out/registry-passwords" --users-file "$out/registry-users.json"
if exists schema-registry-users; then
  echo "schema-registry-users exists: replace it with the new $out/registry-users.json if the charter changed" >&2
else
  secret schema-registry-users users.json="$out/registry-users.json"
fi
sinks=()
for file in "$out"/registry-passwords/sink-*.password; do sinks+=("$(basename "$file" .password)"); done
for user in backbone-init processor operator "${sinks[@]}"; do
  if ! exists "registry-$user"; then
    printf '%s' "$user" > "$out/registry-$user.user"
    head -n 1 "$out/registry-passwords/$user.password" | tr -d '\n' > "$out/registry-$user.value"
    secret "registry-$user" BACKBONE_SCHEMA_REGISTRY_USER="$out/registry-$user.user" \
      BACKBONE_SCHEMA_REGISTRY_PASSWORD="$out/registry-$user.value"
    rm -f "$out/registry-$user.user" "$out/registry-$user.value"
  fi
done

# The HTTPS doors for agencies and analysts (schema-registry.yaml's schema-registry-agencies,
# clickhouse.yaml's clickhouse-analysts): a private CA made here, whose certificate
# ($out/backbone-ca.crt) each agency receives, and a server certificate for each door's name
# (REGISTRY_HOST, CLICKHOUSE_HOST: the names agencies resolve to the LoadBalancers). To use your own
# PKI instead, create the Secrets schema-registry-tls and clickhouse-tls (keys tls.crt, tls.key) first.
server_certificate() {  # SECRET HOST
  local name=$1 host=$2
  exists "$name" && return 0
  if [ ! -s "$out/backbone-ca.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=backbone deployment CA" \
      -keyout "$out/backbone-ca.key" -out "$out/backbone-ca.crt" 2> /dev/null
  fi
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$host" \
    -keyout "$out/$name.key" -out "$out/$name.csr" 2> /dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$host" > "$out/$name.ext"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/backbone-ca.crt" -CAkey "$out/backbone-ca.key" -CAcreateserial \
    -days 825 -extfile "$out/$name.ext" -out "$out/$name.crt" 2> /dev/null
  rm -f "$out/$name.csr" "$out/$name.ext"
  secret "$name" tls.crt="$out/$name.crt" tls.key="$out/$name.key"
}
server_certificate schema-registry-tls "${REGISTRY_HOST:-registry.backbone.example.org}"
server_certificate clickhouse-tls "${CLICKHOUSE_HOST:-clickhouse.backbone.example.org}"

echo "Secrets in namespace $ns are in place; generated values are in $out (move them to your secret store)."
