{{/* The chart's name, truncated to a DNS label. */}}
{{- define "tkgops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the prefix of every object's name. */}}
{{- define "tkgops.fullname" -}}
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

{{/* The labels every object carries. */}}
{{- define "tkgops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tkgops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The labels that select the bot's pods. */}}
{{- define "tkgops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tkgops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the bot runs as. */}}
{{- define "tkgops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tkgops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository with the digest, else the tag (default appVersion). */}}
{{- define "tkgops.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the pod sees things: the journal volume, the config file, the App key. */}}
{{- define "tkgops.stateDir" -}}/var/lib/tkgops{{- end }}
{{- define "tkgops.configDir" -}}/etc/tkgops/config{{- end }}
{{- define "tkgops.appKeyDir" -}}/etc/tkgops/github-app{{- end }}
{{- define "tkgops.kubeconfigDir" -}}/etc/tkgops/kubeconfigs{{- end }}

{{/*
The bot configuration file (engine/bot/src/config.rs, `BotConfig`): the binary refuses unknown
keys, so only the keys it knows are written, and optional ones only when set.
*/}}
{{- define "tkgops.config" -}}
{{- $c := .Values.config }}
{{- $gh := dict "apiUrl" $c.github.apiUrl "owner" (required "config.github.owner is required" $c.github.owner) "repo" (required "config.github.repo is required" $c.github.repo) }}
{{- if $c.github.appId }}
{{- $_ := required "secrets.githubAppPrivateKey.name is required with config.github.appId" .Values.secrets.githubAppPrivateKey.name }}
{{- $_ := set $gh "appId" (int64 $c.github.appId) }}
{{- $_ := set $gh "privateKeyFile" (printf "%s/%s" (include "tkgops.appKeyDir" .) .Values.secrets.githubAppPrivateKey.key) }}
{{- if $c.github.installationId }}
{{- $_ := set $gh "installationId" (int64 $c.github.installationId) }}
{{- end }}
{{- else }}
{{- $_ := required "secrets.githubToken.name is required without config.github.appId" .Values.secrets.githubToken.name }}
{{- $_ := set $gh "tokenEnv" "GITHUB_TOKEN" }}
{{- end }}
{{- if $c.github.cloneUrl }}
{{- $_ := set $gh "cloneUrl" $c.github.cloneUrl }}
{{- end }}
{{- $cfg := dict "github" $gh "stateDir" (include "tkgops.stateDir" .) "listen" (printf "0.0.0.0:%d" (int .Values.containerPort)) }}
{{- $_ := set $cfg "pollInterval" $c.pollInterval }}
{{- $_ := set $cfg "kubePollInterval" $c.kubePollInterval }}
{{- $_ := set $cfg "tmcPollInterval" $c.tmcPollInterval }}
{{- $_ := set $cfg "commentMinInterval" $c.commentMinInterval }}
{{- $_ := set $cfg "webhookSecretEnv" "GITHUB_WEBHOOK_SECRET" }}
{{- $_ := set $cfg "tmcTokenEnv" "VMW_CLOUD_API_TOKEN" }}
{{- if $c.awsEndpointUrl }}
{{- $_ := set $cfg "awsEndpointUrl" $c.awsEndpointUrl }}
{{- end }}
{{- if $c.trustedPolicyCommit }}
{{- $_ := set $cfg "trustedPolicyCommit" $c.trustedPolicyCommit }}
{{- end }}
{{- with .Values.leaderElection }}
{{- if .enabled }}
{{- if not $.Values.rbac.leaderElection }}
{{- fail "leaderElection.enabled needs rbac.leaderElection (the Role's rule on the release's Lease)" }}
{{- end }}
{{- /* The Lease the Role names: the release's full name, in the release's namespace. */}}
{{- $_ := set $cfg "leaderElection" (dict "enabled" true "leaseName" (include "tkgops.fullname" $) "namespace" $.Release.Namespace "leaseDuration" .leaseDuration "renewDeadline" .renewDeadline "retryPeriod" .retryPeriod) }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
