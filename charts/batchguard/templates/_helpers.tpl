{{- define "batchguard.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "batchguard.serviceAccountName" -}}
{{ default (include "batchguard.fullname" .) .Values.serviceAccount.name }}
{{- end -}}

{{- define "batchguard.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "batchguard.labels" -}}
{{ include "batchguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "batchguard.leaderElection" -}}
{{- if or .Values.leaderElection (gt (int .Values.replicas) 1) -}}true{{- end -}}
{{- end -}}

{{/* The rules the operator needs on BatchRuns, their Jobs and worker pods, and Events. */}}
{{- define "batchguard.rules" -}}
- apiGroups: ["batchguard.dev"]
  resources: ["batchruns"]
  verbs: ["get", "list", "watch", "patch"]        # watch + fresh read; patch: the cleanup finalizer
- apiGroups: ["batchguard.dev"]
  resources: ["batchruns/status"]
  verbs: ["patch"]                                # the ledger: one conditional status write
- apiGroups: ["batchguard.dev"]
  resources: ["batchqueues"]
  verbs: ["list", "watch"]                        # budgets shared by runs
- apiGroups: ["batchguard.dev"]
  resources: ["batchqueues/status"]
  verbs: ["patch"]                                # what a queue holds and who waits
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "deletecollection"]   # one Job per batch; removed with the run
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch", "delete"]     # result finalizer; the guard marks and drains
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]                      # Events, patched when they repeat
{{- end -}}
