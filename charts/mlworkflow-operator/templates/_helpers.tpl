{{/* The chart's name, truncated to the 63 characters of a label value. */}}
{{- define "mlworkflow-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: the release name, with the chart's name unless it already holds it. */}}
{{- define "mlworkflow-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "mlworkflow-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "mlworkflow-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the operator's Pod. */}}
{{- define "mlworkflow-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlworkflow-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mlworkflow-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlworkflow-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mlworkflow-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The rules of the operator's role; each one says what needs it. */}}
{{- define "mlworkflow-operator.rules" -}}
# Watch MLWorkflows; patch them for kopf's progress annotations (kept out of status).
- apiGroups: ["mlworkflow.io"]
  resources: ["mlworkflows"]
  verbs: ["get", "list", "watch", "patch"]
# Write conditions, phase and observedGeneration.
- apiGroups: ["mlworkflow.io"]
  resources: ["mlworkflows/status"]
  verbs: ["get", "patch"]
# Report refusals and progress as Events on the MLWorkflow.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Training Jobs: created (server-side apply) and watched for their results.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "patch", "create"]
# The drift-check CronJob and Forecast's batch CronJob (deleted when spec.batch.schedule is removed); their
# Jobs are listed with the training Jobs above.
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["patch", "create", "delete"]
# A Job's result is its Pods' termination messages; the operator only reads Pods.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Serving: the BentoML Deployment and its Service, applied server-side.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "patch", "create"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["patch", "create"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["patch", "create", "delete"]
{{- end }}
