#!/usr/bin/env bash
# The webhook's serving certificate without cert-manager and without the certgen Jobs: make a CA and a
# certificate for hami-webhook.<namespace>.svc with openssl, and (with --apply) store them in the Secret
# hami-webhook-tls and put the CA into the caBundle of the Mutating- and ValidatingWebhookConfiguration, using
# kubectl's current context (or $KUBECONFIG). Re-running with --apply replaces both (a rotation: the webhook reloads
# the files by itself).
#
# Usage: deploy/scripts/webhook-cert.sh <out-dir> [--apply] [--namespace hami-system] [--days 825]
set -euo pipefail

out=""; apply=false; namespace=hami-system; days=825; config=hami-webhook; service=hami-webhook
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) apply=true ;;
    --namespace) namespace=${2:?--namespace needs a value}; shift ;;
    --days) days=${2:?--days needs a value}; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) echo "webhook-cert: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
[ -n "$out" ] || { echo "webhook-cert: give an output directory (see --help)" >&2; exit 2; }
mkdir -p "$out"
cd "$out"
umask 077

host="$service.$namespace.svc"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -keyout ca.key -out ca.crt -subj "/CN=hami-webhook-ca" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls.key -out tls.csr \
  -subj "/CN=$host" 2>/dev/null
# The apiserver checks the name in the SANs (a CN alone is refused since Kubernetes 1.19).
printf 'subjectAltName=DNS:%s,DNS:%s.cluster.local\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n' \
  "$host" "$host" > san.ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -extfile san.ext \
  -out tls.crt 2>/dev/null
rm -f tls.csr san.ext ca.srl
echo "webhook-cert: wrote $out/{ca.crt,ca.key,tls.crt,tls.key} for $host"

if $apply; then
  kubectl -n "$namespace" create secret tls hami-webhook-tls --cert=tls.crt --key=tls.key \
    --dry-run=client -o yaml | kubectl apply --server-side --force-conflicts -f - >/dev/null
  bundle=$(base64 -w0 ca.crt)
  # Both configurations of the webhook (mutating, and the validating tenant guard) share the name.
  for kind in mutatingwebhookconfiguration validatingwebhookconfiguration; do
    count=$(kubectl get "$kind" "$config" -o jsonpath='{range .webhooks[*]}x{end}')
    patch=""
    for ((i = 0; i < ${#count}; i++)); do
      patch="$patch${patch:+,}{\"op\":\"add\",\"path\":\"/webhooks/$i/clientConfig/caBundle\",\"value\":\"$bundle\"}"
    done
    kubectl patch "$kind" "$config" --type=json -p "[$patch]" >/dev/null
  done
  echo "webhook-cert: Secret $namespace/hami-webhook-tls and the caBundle of both $config configurations updated"
fi
