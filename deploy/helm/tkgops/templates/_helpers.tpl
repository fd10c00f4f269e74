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

{{/*
Where the pod sees things: the journal volume, the config file, and each Secret mounted as
files (the App key, the webhook secret, the TMC token), each in its own directory. The Secrets
are mounted whole-directory, never with subPath: the kubelet updates a Secret volume when the
Secret changes (not a subPath mount), and the bot reads these files again when they change.
*/}}
{{- define "tkgops.stateDir" -}}/var/lib/tkgops{{- end }}
{{- define "tkgops.configDir" -}}/etc/tkgops/config{{- end }}
{{- define "tkgops.appKeyDir" -}}/etc/tkgops/github-app{{- end }}
{{- define "tkgops.webhookSecretDir" -}}/etc/tkgops/webhook{{- end }}
{{- define "tkgops.tmcTokenDir" -}}/etc/tkgops/tmc{{- end }}
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
{{- /* The webhook secret and the TMC token are files of their Secrets' volumes, read again when
they change. webhookSecretEnv and tmcTokenEnv are left out (a file key wins over them anyway):
without its Secret, the bot looks for the binary's default variable (GITHUB_WEBHOOK_SECRET,
VMW_CLOUD_API_TOKEN), which only extraEnv could set; unset, every delivery is refused or
TMC steps fail. */}}
{{- with .Values.secrets.webhookSecret }}
{{- if .name }}
{{- $_ := set $cfg "webhookSecretFile" (printf "%s/%s" (include "tkgops.webhookSecretDir" $) .key) }}
{{- end }}
{{- end }}
{{- with .Values.secrets.tmcToken }}
{{- if .name }}
{{- $_ := set $cfg "tmcTokenFile" (printf "%s/%s" (include "tkgops.tmcTokenDir" $) .key) }}
{{- end }}
{{- end }}
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
