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
  verbs: ["list", "watch", "create", "delete", "deletecollection"]   # one Job per batch, removed after its retention and with the run
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch", "delete"]     # result finalizer; the guard marks and drains
- apiGroups: [""]
  resources: ["pods/resize"]
  verbs: ["patch"]                                # the guard grows a worker's memory in place (spec.resources.memory.max)
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]                      # Events, patched when they repeat
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]                                 # why a batch Job has no pod (FailedCreate)
{{- end -}}

{{/* What `batchguard release-finalizers` needs: find runs and worker pods, patch their finalizers. */}}
{{- define "batchguard.releaseFinalizersRules" -}}
- apiGroups: ["batchguard.dev"]
  resources: ["batchruns"]
  verbs: ["list", "patch"]                        # remove batchguard.dev/cleanup
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]                        # remove batchguard.dev/result
{{- end -}}

{{/* Labels and annotations of the CRDs: kept on uninstall unless crds.keep is false. */}}
{{- define "batchguard.crdMetadata" -}}
labels:
  app.kubernetes.io/name: {{ .Chart.Name }}
  app.kubernetes.io/part-of: batchguard
  app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
  app.kubernetes.io/managed-by: {{ .Release.Service }}
  helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- if .Values.crds.keep }}
annotations:
  helm.sh/resource-policy: keep
{{- end }}
{{- end -}}

{{/* The operator image: by digest when one is given, else by tag (default: appVersion). */}}
{{- define "batchguard.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* Render a monitoring.coreos.com/v1 kind: when its API is served, or when forced (helm template, GitOps renderers). */}}
{{- define "batchguard.monitoringApi" -}}
{{- $kind := index . 0 -}}{{- $values := index . 1 -}}{{- $ctx := index . 2 -}}
{{- if and $values.enabled (or $values.force ($ctx.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) -}}true{{- end -}}
{{- end -}}
