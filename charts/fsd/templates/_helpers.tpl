{{/* Names, labels and the settings several templates share. */}}

{{- define "fsd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: <release>-fsd, or just <release> when it already contains the chart name. */}}
{{- define "fsd.fullname" -}}
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

{{- define "fsd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (app.kubernetes.io/*) on every object. */}}
{{- define "fsd.labels" -}}
helm.sh/chart: {{ include "fsd.chart" . }}
{{ include "fsd.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fsd
{{- end }}

{{- define "fsd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fsd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fsd.operator.fullname" -}}
{{- printf "%s-operator" (include "fsd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fsd.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "fsd.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fsd.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "fsd.minio.fullname" -}}
{{- printf "%s-minio" (include "fsd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The NATS URL the operator hands to the functions: the subchart's Service, or externalNats.url.
The subchart's name follows the nats chart's own rule (nats.fullname in its _helpers.tpl). */}}
{{- define "fsd.natsUrl" -}}
{{- if .Values.nats.enabled }}
{{- $name := "" }}
{{- if .Values.nats.fullnameOverride }}
{{- $name = .Values.nats.fullnameOverride }}
{{- else }}
{{- $chart := default "nats" .Values.nats.nameOverride }}
{{- if contains $chart .Release.Name }}
{{- $name = .Release.Name }}
{{- else }}
{{- $name = printf "%s-%s" .Release.Name $chart }}
{{- end }}
{{- end }}
{{- printf "nats://%s.%s:4222" ($name | trunc 63 | trimSuffix "-") (default .Release.Namespace .Values.nats.namespaceOverride) }}
{{- else }}
{{- required "externalNats.url is required when nats.enabled is false" .Values.externalNats.url }}
{{- end }}
{{- end }}

{{/* The S3 endpoint: the chart's MinIO Service, or s3.external.endpoint. */}}
{{- define "fsd.s3Endpoint" -}}
{{- if .Values.s3.minio.enabled }}
{{- printf "http://%s.%s:9000" (include "fsd.minio.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "s3.external.endpoint is required when s3.minio.enabled is false" .Values.s3.external.endpoint }}
{{- end }}
{{- end }}

{{/* The chart's credentials Secret (contract: <fullname>-credentials, release-prefixed). */}}
{{- define "fsd.credentialsSecret" -}}
{{- printf "%s-credentials" (include "fsd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* MinIO's root keys: their own Secret, read by the MinIO pod only. */}}
{{- define "fsd.minio.rootSecret" -}}
{{- printf "%s-minio-root" (include "fsd.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where each credential lives: {"name": secret, "key": key}, as JSON. */}}
{{- define "fsd.secretRef.natsToken" -}}
{{- with .Values.credentials.natsToken }}
{{- if .existingSecret }}{{ dict "name" .existingSecret "key" .key | toJson }}
{{- else }}{{ dict "name" (include "fsd.credentialsSecret" $) "key" "fsd-nats-token" | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fsd.secretRef.s3AccessKey" -}}
{{- with .Values.credentials.s3 }}
{{- if .existingSecret }}{{ dict "name" .existingSecret "key" .accessKeyKey | toJson }}
{{- else }}{{ dict "name" (include "fsd.credentialsSecret" $) "key" "fsd-s3-access-key" | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fsd.secretRef.s3SecretKey" -}}
{{- with .Values.credentials.s3 }}
{{- if .existingSecret }}{{ dict "name" .existingSecret "key" .secretKeyKey | toJson }}
{{- else }}{{ dict "name" (include "fsd.credentialsSecret" $) "key" "fsd-s3-secret-key" | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fsd.secretRef.gatewayPassword" -}}
{{- with .Values.credentials.gatewayPassword }}
{{- if .existingSecret }}{{ dict "name" .existingSecret "key" .key | toJson }}
{{- else }}{{ dict "name" (include "fsd.credentialsSecret" $) "key" "fsd-gateway-password" | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fsd.secretRef.runKey" -}}
{{- with .Values.credentials.runKey }}
{{- if .existingSecret }}{{ dict "name" .existingSecret "key" .key | toJson }}
{{- else }}{{ dict "name" (include "fsd.credentialsSecret" $) "key" "fsd-run-key" | toJson }}
{{- end }}
{{- end }}
{{- end }}

{{/* The five credential files the operator mounts at /var/openfaas/secrets: file name (the
OpenFaaS secret name, fsd.settings.SECRET_VARS) -> where it lives, as JSON. */}}
{{- define "fsd.credentialFiles" -}}
{{- dict
  "fsd-nats-token" (include "fsd.secretRef.natsToken" . | fromJson)
  "fsd-s3-access-key" (include "fsd.secretRef.s3AccessKey" . | fromJson)
  "fsd-s3-secret-key" (include "fsd.secretRef.s3SecretKey" . | fromJson)
  "fsd-gateway-password" (include "fsd.secretRef.gatewayPassword" . | fromJson)
  "fsd-run-key" (include "fsd.secretRef.runKey" . | fromJson)
  | toJson }}
{{- end }}

{{/* A container's restricted securityContext (Pod Security Standard "restricted"). */}}
{{- define "fsd.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
