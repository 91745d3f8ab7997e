#!/usr/bin/env bash
# Plain-kubectl chaos, the same experiment as pod-kill-worker-schedule.yaml
# without Chaos Mesh: every INTERVAL seconds, delete one random running
# worker pod (1 s grace period: the worker has no time to drain). Run a long
# computation meanwhile and watch it still complete:
#
#   k8s/chaos/kill-random-worker.sh &
#   kubectl -n resonate-patterns run rp-call --rm -i --restart=Never \
#     --image=resonate-patterns:0.1.0 \
#     --env=RESONATE_URL=http://resonate-patterns-server.resonate-patterns.svc:8001 \
#     -- call factorial 300 --json
#   kill %1
#
# Environment:
#   NAMESPACE   namespace of the release            (resonate-patterns)
#   SELECTOR    label selector of the worker pods   (the k8s/ install's workers)
#   INTERVAL    seconds between two kills           (30)
#   ITERATIONS  kills before exiting; 0 = forever   (0)
#   GRACE       grace period of the delete, seconds (1; 0 = force-delete)
#   KUBECTL     kubectl binary                      (kubectl)
set -euo pipefail

NAMESPACE="${NAMESPACE:-resonate-patterns}"
SELECTOR="${SELECTOR:-app.kubernetes.io/name=resonate-patterns,app.kubernetes.io/instance=resonate-patterns,app.kubernetes.io/component=worker}"
INTERVAL="${INTERVAL:-30}"
ITERATIONS="${ITERATIONS:-0}"
GRACE="${GRACE:-1}"
KUBECTL="${KUBECTL:-kubectl}"

log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*"; }

rounds=0
while [[ "$ITERATIONS" -eq 0 || "$rounds" -lt "$ITERATIONS" ]]; do
  mapfile -t pods < <("$KUBECTL" -n "$NAMESPACE" get pods -l "$SELECTOR" \
    --field-selector=status.phase=Running -o name)
  if [[ "${#pods[@]}" -eq 0 ]]; then
    log "no running worker pod matches $SELECTOR in $NAMESPACE"
  else
    victim="${pods[RANDOM % ${#pods[@]}]}"
    log "deleting $victim (1 of ${#pods[@]} running)"
    delete_flags=(--grace-period="$GRACE" --wait=false --ignore-not-found)
    if [[ "$GRACE" -eq 0 ]]; then
      delete_flags+=(--force)
    fi
    "$KUBECTL" -n "$NAMESPACE" delete "$victim" "${delete_flags[@]}"
  fi
  rounds=$((rounds + 1))
  if [[ "$ITERATIONS" -eq 0 || "$rounds" -lt "$ITERATIONS" ]]; then
    sleep "$INTERVAL"
  fi
done
