#!/usr/bin/env bash
# Creates the Secrets the backbone reads, out of band: they are not in kustomization.yaml (so
# `kubectl apply -k` can never overwrite a real key with a placeholder) and never in git.
#
#   deploy/kubernetes/create-secrets.sh [OUT_DIR]      # OUT_DIR default ./backbone-secrets (mode 0700)
#
# Run once per cluster before `kubectl apply -k deploy/kubernetes`, with kubectl pointed at the
# cluster and the backbone installed (`pip install .` from this repository, for `backbone keys init`
# and `backbone registry users add`). Set NAMESPACE if not `backbone`. A Secret that already exists
# is left as it is; rotate a value with
#   kubectl -n backbone create secret generic NAME --from-file=... --dry-run=client -o yaml | kubectl apply -f -
# OUT_DIR keeps what was generated (master keys, the roles' keyrings, passwords, the registry's users file): move
# it into your secret store and delete it here. Kafka users' passwords are not here: Strimzi writes
# them to a Secret per KafkaUser.
set -euo pipefail

ns=${NAMESPACE:-backbone}
out=${1:-./backbone-secrets}
repo=$(cd "$(dirname "$0")/../.." && pwd)
umask 077
mkdir -p "$out"

exists() { kubectl -n "$ns" get secret "$1" > /dev/null 2>&1; }
password() {  # a random password in a file of its own (URL-safe: it goes into DSNs)
  [ -s "$out/$1.password" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > "$out/$1.password"
  head -n 1 "$out/$1.password"
}
backbone_cli() {  # the charter and catalog of this checkout, nothing from the caller's environment
  env -u BACKBONE_MASTER_KEY -u BACKBONE_MASTER_KEY_FILE -u BACKBONE_KEYRING_PATH \
    BACKBONE_SCHEMAS_DIR="$repo/schemas" BACKBONE_AGREEMENTS_DIR="$repo/agreements" "$@"
}

# The master key encrypts the keyring: base64 of 32 random bytes.
if ! exists backbone-master-key; then
  [ -s "$out/master-key" ] || python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())' > "$out/master-key"
  kubectl -n "$ns" create secret generic backbone-master-key --from-file=master-key="$out/master-key"
elif [ ! -s "$out/master-key" ]; then
  kubectl -n "$ns" get secret backbone-master-key -o jsonpath='{.data.master-key}' | base64 -d > "$out/master-key"
fi

# Each role its own keyring (backbone.keys.roles). The processor's (domain, encryption and checkpoint
# signing keys, under the master key above) is the only one a pod mounts: read-only in every
# processor pod. `backbone keys rotate` on this file, then replacing the Secret and restarting the
# processors, rotates keys. The operator's (its signing key only, no pseudonym key) and oversight's
# (re-identification) keyrings, each under a master key of its own, stay in OUT_DIR for the people
# who hold those roles: no workload here holds them.
if ! exists backbone-keyring; then
  backbone_cli BACKBONE_ROLE=processor BACKBONE_MASTER_KEY_FILE="$out/master-key" BACKBONE_KEYRING_PATH="$out/processor.keyring" \
    backbone keys init
  kubectl -n "$ns" create secret generic backbone-keyring --from-file=processor.keyring="$out/processor.keyring"
fi
if [ ! -s "$out/operator.keyring" ]; then
  backbone_cli BACKBONE_ROLE=operator BACKBONE_KEYRING_PATH="$out/operator.keyring" \
    backbone keys init --new-master-key-file "$out/operator-master-key"
fi
if [ ! -s "$out/oversight.keyring" ] && [ -s "$out/processor.keyring" ]; then
  backbone_cli BACKBONE_ROLE=oversight BACKBONE_KEYRING_PATH="$out/oversight.keyring" \
    backbone keys init --new-master-key-file "$out/oversight-master-key" \
    --from-keyring "$out/processor.keyring" --from-master-key-file "$out/master-key"
fi

# ClickHouse's `backbone` user (clickhouse.yaml reads `password`; sinks read `dsn`).
if ! exists backbone-clickhouse; then
  pw=$(password clickhouse-backbone)
  kubectl -n "$ns" create secret generic backbone-clickhouse --from-literal=password="$pw" \
    --from-literal=dsn="http://backbone:$pw@clickhouse-backbone.$ns.svc.cluster.local:8123/default"
fi

# The registry's users (scrypt hashes only) and the user each backbone pod sends: made together,
# since each pod's password must be the one hashed in the users file.
registry_secrets=(schema-registry-users registry-init registry-processor registry-sink)
present=0
for name in "${registry_secrets[@]}"; do
  if exists "$name"; then present=$((present + 1)); fi
done
if [ "$present" -eq 0 ]; then
  registry_user() {  # name role [subject prefixes]
    password "registry-user-$1" > /dev/null
    backbone_cli backbone registry users add "$1" --role "$2" ${3:+--subjects "$3"} --replace \
      --password-file "$out/registry-user-$1.password" --users-file "$out/registry-users.json"
  }
  registry_user operator admin
  registry_user registry-init write raw.
  registry_user registry-processor write shared.,audit.decisions
  registry_user registry-sink write alerts.fraud
  kubectl -n "$ns" create secret generic schema-registry-users --from-file=users.json="$out/registry-users.json"
  for user in registry-init registry-processor registry-sink; do
    kubectl -n "$ns" create secret generic "$user" --from-literal=BACKBONE_SCHEMA_REGISTRY_USER="$user" \
      --from-literal=BACKBONE_SCHEMA_REGISTRY_PASSWORD="$(password "registry-user-$user")"
  done
elif [ "$present" -ne "${#registry_secrets[@]}" ]; then
  echo "only some of ${registry_secrets[*]} exist: delete them to have them made again together" >&2
  exit 1
fi

echo "Secrets in namespace $ns are in place; generated values are in $out (move them to your secret store)."
