{{/* Names, labels, the rendered configuration file and the pod parts every saga container shares. */}}

{{- define "saga.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "saga.fullname" -}}
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

{{- define "saga.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "saga.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include "saga.selectorLabels" (list . "api") */}}
{{- define "saga.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "saga.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "saga.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The configuration file: `config` from the values, with the addresses, saga.execute and
workflow_dir set by the chart. Secrets in it are refused: they come from Secrets (saga.env).
*/}}
{{- define "saga.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- with $config.database }}
{{- if hasKey . "password" }}
{{- fail "config.database.password: keep the password in a Secret (database.existingSecret, database.passwordKey)" }}
{{- end }}
{{- end }}
{{- with $config.kafka }}
{{- if hasKey . "sasl" }}
{{- fail "config.kafka.sasl: keep the SASL credentials in a Secret (kafka.sasl.existingSecret)" }}
{{- end }}
{{- end }}
{{- if and .Values.kafka.sasl.existingSecret (not $config.kafka) }}
{{- fail "kafka.sasl.existingSecret is set but config.kafka (brokers) is not" }}
{{- end }}
{{- $db := .Values.database }}
{{- if not (and $db.existingSecret (or $db.urlKey $db.passwordKey)) }}
{{- if not $config.database }}
{{- fail "saga-server needs PostgreSQL: set database.existingSecret with database.urlKey (DATABASE_URL), or config.database with database.passwordKey" }}
{{- end }}
{{- end }}
{{- if and $db.passwordKey (not $db.urlKey) (not $config.database) }}
{{- fail "database.passwordKey needs config.database (host, name, user)" }}
{{- end }}
{{- $_ := set $config "server" (mergeOverwrite (default dict $config.server) (dict "host" "0.0.0.0" "port" (int .Values.api.ports.http))) }}
{{- $_ = set $config "grpc" (mergeOverwrite (default dict $config.grpc) (dict "host" "0.0.0.0" "port" (int .Values.api.ports.grpc))) }}
{{- $saga := mergeOverwrite (default dict $config.saga) (dict "execute" .Values.api.execute) }}
{{- if .Values.workflows }}
{{- $_ = set $saga "workflow_dir" "/etc/saga/workflows" }}
{{- end }}
{{- $_ = set $config "saga" $saga }}
{{- toYaml $config }}
{{- end }}

{{/* Environment of every saga container: CONFIG_PATH and the Secret references. */}}
{{- define "saga.env" -}}
- name: CONFIG_PATH
  value: /etc/saga/config.yaml
{{- $db := .Values.database }}
{{- if and $db.existingSecret $db.urlKey }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: {{ $db.urlKey }}
{{- else if and $db.existingSecret $db.passwordKey }}
- name: DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $db.existingSecret }}
      key: {{ $db.passwordKey }}
{{- /* A YAML literal block, so the password is read as it is (never as a number, a
       boolean, or YAML syntax); Kubernetes substitutes $(DATABASE_PASSWORD). */}}
- name: SAGA_DATABASE_PASSWORD
  value: "|2-\n  $(DATABASE_PASSWORD)"
{{- end }}
{{- with .Values.kafka.sasl }}
{{- if .existingSecret }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .usernameKey }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .passwordKey }}
- name: SAGA_KAFKA_SASL
  value: {{ printf "mechanism: %s\nusername: |2-\n  $(KAFKA_SASL_USERNAME)\npassword: |2-\n  $(KAFKA_SASL_PASSWORD)" (toJson .mechanism) | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The config (and workflows) volumes, and their mounts. */}}
{{- define "saga.volumes" -}}
- name: config
  configMap:
    name: {{ include "saga.fullname" . }}
{{- if .Values.workflows }}
- name: workflows
  configMap:
    name: {{ include "saga.fullname" . }}-workflows
{{- end }}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "saga.volumeMounts" -}}
- name: config
  mountPath: /etc/saga/config.yaml
  subPath: config.yaml
  readOnly: true
{{- if .Values.workflows }}
- name: workflows
  mountPath: /etc/saga/workflows
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* Pod-level settings shared by the API and worker pods. */}}
{{- define "saga.podSpec" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}
