{{/*
The chart name, or nameOverride.
*/}}
{{- define "zbase-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it already says
"operator", else `<release>-operator` (release `zbase` gives `zbase-operator`).
*/}}
{{- define "zbase-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains "operator" .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
`helm.sh/chart`: name and version, as Helm's own scaffold writes it.
*/}}
{{- define "zbase-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels every object of the release carries.
*/}}
{{- define "zbase-operator.labels" -}}
helm.sh/chart: {{ include "zbase-operator.chart" . }}
{{ include "zbase-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: zbase
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The labels that pick the operator pods; never change them, a Deployment's selector is immutable.
*/}}
{{- define "zbase-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "zbase-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "zbase-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "zbase-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Lease the operator replicas compete for.
*/}}
{{- define "zbase-operator.leaseName" -}}
{{- default (include "zbase-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: the digest wins, the tag defaults to the
chart's appVersion. Call with (list .Values.image .Chart.AppVersion).
*/}}
{{- define "zbase-operator.imageRef" -}}
{{- $image := index . 0 }}
{{- $appVersion := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $appVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does in the API for BaseStations, in every namespace it watches: the rules
of the ClusterRole (all namespaces) or of each watched namespace's Role. A comment on each
rule says why the operator needs it.
*/}}
{{- define "zbase-operator.stationRules" -}}
# Watch BaseStations: the operator's input.
- apiGroups: ["zbase.dev"]
  resources: ["basestations"]
  verbs: ["get", "list", "watch"]
# Report each station's state (conditions, endpoints) in its status subresource.
- apiGroups: ["zbase.dev"]
  resources: ["basestations/status"]
  verbs: ["get", "patch", "update"]
# Add and remove the finalizer that lets cleanup run before a BaseStation is deleted.
- apiGroups: ["zbase.dev"]
  resources: ["basestations/finalizers"]
  verbs: ["update"]
# The station pods: server-side applied, pruned when no longer wanted.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The station's Services, its configuration, its keys and credentials, and the
# ServiceAccount its pods run as: server-side applied and pruned.
- apiGroups: [""]
  resources: ["services", "configmaps", "secrets", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Keep the station available through node drains: server-side applied and pruned.
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Isolate the station pods on the network: server-side applied and pruned.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Scheduled backups (spec.backup): the CronJob is applied and pruned, and watched for its last
# successful run, which the Backup condition reports.
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# On-demand backups: watch BaseStationBackups, the operator's other input.
- apiGroups: ["zbase.dev"]
  resources: ["basestationbackups"]
  verbs: ["get", "list", "watch"]
# Report how each on-demand backup went (phase, where it was written) in its status.
- apiGroups: ["zbase.dev"]
  resources: ["basestationbackups/status"]
  verbs: ["get", "patch", "update"]
# Set the BaseStationBackup as owner (blockOwnerDeletion) of the Job that takes it.
- apiGroups: ["zbase.dev"]
  resources: ["basestationbackups/finalizers"]
  verbs: ["update"]
# The Job of each on-demand backup: created once, watched; deleted with its request by owner
# reference.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create"]
# Read a finished backup pod's termination message: where the backup was written, or why it
# failed.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# The station's TLS certificates, issued by cert-manager: server-side applied and pruned.
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# The stations' volumes: only deleted when a BaseStation asks for its data to be deleted.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "delete"]
# Read the CloudNativePG cluster a station stores in: whether it is ready, where to connect.
- apiGroups: ["postgresql.cnpg.io"]
  resources: ["clusters"]
  verbs: ["get", "list", "watch"]
# Tell users what happened to their BaseStation (`kubectl describe`).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# The same through the core API, which older event recorders use.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
