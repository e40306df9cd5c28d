{{/* The chart name, as used in labels. */}}
{{- define "agentbudget.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name. Truncated to 52 characters so that the longest suffix
("-postgresql", "-operator") still fits the 63 characters of a DNS label.
*/}}
{{- define "agentbudget.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "agentbudget.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: include "agentbudget.selectorLabels" (list $ "authority") */}}
{{- define "agentbudget.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "agentbudget.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every label of a component's resources: include "agentbudget.labels" (list $ "authority") */}}
{{- define "agentbudget.labels" -}}
{{- $ := index . 0 -}}
{{ include "agentbudget.selectorLabels" . }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: agentbudget
app.kubernetes.io/managed-by: {{ $.Release.Service }}
helm.sh/chart: {{ include "agentbudget.chart" $ }}
{{- with $.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "agentbudget.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "agentbudget.authority.serviceAccountName" -}}
{{- if .Values.authority.serviceAccount.create -}}
{{ default (include "agentbudget.fullname" .) .Values.authority.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.authority.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "agentbudget.operator.fullname" -}}
{{ include "agentbudget.fullname" . }}-operator
{{- end -}}

{{- define "agentbudget.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{ default (include "agentbudget.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else -}}
{{ default "default" .Values.operator.serviceAccount.name }}
{{- end -}}
{{- end -}}

{{- define "agentbudget.postgresql.fullname" -}}
{{ include "agentbudget.fullname" . }}-postgresql
{{- end -}}

{{/* The Secret and key holding the DSN: the bundled PostgreSQL's, or the one the user made. */}}
{{- define "agentbudget.database.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{ include "agentbudget.postgresql.fullname" . }}
{{- else -}}
{{ required "database.existingSecret: name the Secret holding the PostgreSQL DSN, or set postgresql.enabled" .Values.database.existingSecret }}
{{- end -}}
{{- end -}}

{{- define "agentbudget.database.secretKey" -}}
{{- if .Values.postgresql.enabled -}}
url
{{- else -}}
{{ required "database.existingSecretKey: the key of the DSN in database.existingSecret" .Values.database.existingSecretKey }}
{{- end -}}
{{- end -}}

{{/* The DSN as an environment variable, never as a literal. */}}
{{- define "agentbudget.database.env" -}}
- name: AGENTBUDGET_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "agentbudget.database.secretName" . }}
      key: {{ include "agentbudget.database.secretKey" . }}
{{- end -}}

{{/* Whether a price configuration is mounted, and from which ConfigMap and key. */}}
{{- define "agentbudget.prices.enabled" -}}
{{- if or .Values.prices.existingConfigMap .Values.prices.config -}}true{{- end -}}
{{- end -}}

{{- define "agentbudget.prices.configMap" -}}
{{- if .Values.prices.existingConfigMap -}}
{{ .Values.prices.existingConfigMap }}
{{- else -}}
{{ include "agentbudget.fullname" . }}-prices
{{- end -}}
{{- end -}}

{{- define "agentbudget.prices.key" -}}
{{- if .Values.prices.existingConfigMap -}}
{{ .Values.prices.existingConfigMapKey }}
{{- else -}}
prices.yaml
{{- end -}}
{{- end -}}

{{/* Where the operator dials the authority. */}}
{{- define "agentbudget.authority.address" -}}
{{- if .Values.operator.authority -}}
{{ .Values.operator.authority }}
{{- else -}}
{{ include "agentbudget.fullname" . }}.{{ .Release.Namespace }}.svc:{{ .Values.authority.service.port }}
{{- end -}}
{{- end -}}

{{/* A probe's timing fields. */}}
{{- define "agentbudget.probeTiming" -}}
initialDelaySeconds: {{ .initialDelaySeconds }}
periodSeconds: {{ .periodSeconds }}
timeoutSeconds: {{ .timeoutSeconds }}
failureThreshold: {{ .failureThreshold }}
{{- end -}}

{{/* Scheduling fields shared by every pod: include "agentbudget.scheduling" .Values.authority */}}
{{- define "agentbudget.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* "true" when callers must authenticate (authority.auth.mode required), else empty. */}}
{{- define "agentbudget.auth.required" -}}
{{- if eq .Values.authority.auth.mode "required" -}}true{{- end -}}
{{- end -}}

{{/*
The operator's principal at the authority: what a TokenReview names the operator's ServiceAccount
(the one operator-serviceaccount.yaml creates and the operator Deployment runs as).
*/}}
{{- define "agentbudget.operator.principal" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "agentbudget.operator.serviceAccountName" . }}
{{- end -}}

{{/* AGENTBUDGET_ADMIN_PRINCIPALS: the operator's ServiceAccount (when deployed), then authority.auth.adminPrincipals. */}}
{{- define "agentbudget.authority.adminPrincipals" -}}
{{- $admins := list -}}
{{- if .Values.operator.enabled -}}
{{- $admins = append $admins (include "agentbudget.operator.principal" .) -}}
{{- end -}}
{{- range .Values.authority.auth.adminPrincipals -}}
{{- if not (has . $admins) -}}
{{- $admins = append $admins . -}}
{{- end -}}
{{- end -}}
{{- join "," $admins -}}
{{- end -}}

{{/* Whether the chart writes a roles file (authority.auth.roles) for the authority. */}}
{{- define "agentbudget.auth.roles.enabled" -}}
{{- if and (include "agentbudget.auth.required" .) .Values.authority.auth.roles -}}true{{- end -}}
{{- end -}}

{{/* Where the operator's projected token for the authority (audience agentbudget) is mounted. */}}
{{- define "agentbudget.operator.tokenDir" -}}
/var/run/secrets/agentbudget.io
{{- end -}}
