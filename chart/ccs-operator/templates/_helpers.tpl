{{/* Names, labels and checks shared by the templates. */}}

{{- define "ccs-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name: the release name, prefixed to the chart name unless it contains it. */}}
{{- define "ccs-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "ccs-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ccs-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ccs-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ccs-operator.labels" -}}
helm.sh/chart: {{ include "ccs-operator.chart" . }}
{{ include "ccs-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: ccs-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ccs-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ccs-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ccs-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Cross-field rules the schema cannot say clearly; run by every template that renders. */}}
{{- define "ccs-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "Namespaced") (not .Values.watchNamespaces) }}
{{- fail "rbac.scope Namespaced needs watchNamespaces: list the namespaces the operator serves (e.g. --set 'watchNamespaces={team-a,team-b}')" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs operator.leaderElection.enabled: true, or two operators would fight over the same services" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail "metrics.port and health.port must differ" }}
{{- end }}
{{- end }}
