{{/*
Least privilege: exactly the calls the operator makes, nothing else (no Secrets, no writes
of Pods, no delete of its children but a switched-off ServiceMonitor or NetworkPolicy and the
autoscaler of an engine no longer used: the garbage collector removes the rest through owner references).
RBAC cannot narrow by label: every list and watch of children and pods is filtered by the
API server (labelSelector app.kubernetes.io/managed-by=ccs-operator, set by the operator),
and the admission policy (admissionpolicy.yaml) confines its writes to the children of
ClaudeCodeServices.
*/}}
{{- define "ccs-operator.rules" -}}
# The ClaudeCodeServices: kopf lists and watches them (the operator works from that cache;
# it registers no state handlers, so it never writes them); the operator server-side applies
# their status.
- apiGroups: [serving.claudecode.io]
  resources: [claudecodeservices]
  verbs: [list, watch]
- apiGroups: [serving.claudecode.io]
  resources: [claudecodeservices/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin allow only with this.
- apiGroups: [serving.claudecode.io]
  resources: [claudecodeservices/finalizers]
  verbs: [update]
# The children: server-side apply (patch, and create when the child is new), metadata reads
# to detect name collisions and for the resync, and label-filtered lists and watches for
# drift repair (ServiceMonitors by the operator's own watch, the rest by kopf's).
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
# The autoscaler: an HPA (engine HPA) or a KEDA ScaledObject (engine KEDA); switching the
# engine deletes the other one (only the operator's own, by uid). KEDA's own HPA
# (keda-hpa-<name>) is KEDA's: never applied or deleted.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
# A ServiceMonitor switched off in a service's spec is deleted (only the operator's own).
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch, delete]
# The serving pods' optional NetworkPolicy (spec.networkPolicy); deleted when switched off
# (only the operator's own).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# The serving pods (a label-filtered list and watch, never a read of one pod): their
# cold-start times, from creation to ready.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# The External metric each HPA scales on, read to tell whether an adapter serves it
# (a GET of namespaces/<ns>/requests_per_second, which RBAC sees as `list`).
- apiGroups: [external.metrics.k8s.io]
  resources: [requests_per_second]
  verbs: [list]
# Events on the services: posted, and a repeat bumps the existing Event's count (patch).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end }}
