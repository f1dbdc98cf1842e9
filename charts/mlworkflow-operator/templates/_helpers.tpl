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

{{/* Labels of the `helm test` Pod (not the operator's selector labels). */}}
{{- define "mlworkflow-operator.testLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mlworkflow-operator.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator's ServiceAccount: the chart's, or the one named in serviceAccount.name. */}}
{{- define "mlworkflow-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mlworkflow-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image: pinned by digest when image.digest is set, else repository:tag. */}}
{{- define "mlworkflow-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The allow-list as the operator reads it (MLW_ALLOWED_ESTIMATOR_PREFIXES) and the admission policy too. */}}
{{- define "mlworkflow-operator.allowedEstimatorPrefixes" -}}
{{- join "," .Values.allowedEstimatorPrefixes }}
{{- end }}

{{/*
Refuse clusters older than 1.30 (ValidatingAdmissionPolicy GA). Not with Chart.yaml's kubeVersion: helm
checks that against its offline placeholder v1.20.0 too, so `helm template` without a cluster would fail.
Here a version below 1.30 is refused when it is real: the cluster's (a lookup answers: helm talks to one)
or one given with `helm template --kube-version`; only helm's offline placeholder itself renders.
*/}}
{{- define "mlworkflow-operator.checkKubeVersion" -}}
{{- $version := .Capabilities.KubeVersion.Version }}
{{- $live := lookup "v1" "Namespace" "" "default" }}
{{- if and (semverCompare "<1.30.0-0" $version) (or $live (ne $version "v1.20.0")) }}
{{- fail (printf "mlworkflow-operator needs Kubernetes >= 1.30 (ValidatingAdmissionPolicy, CRD validation rules); the target is %s" $version) }}
{{- end }}
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
# Training, search, batch and sync Jobs: created (server-side apply) and watched (only those with the
# workflow label) for their progress: a reconcile reads them from the watch, not with a request.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "patch", "create"]
# The drift-check CronJob and Forecast's batch CronJob (deleted when spec.batch.schedule is removed); their
# Jobs are watched with the training Jobs above. Watched, as the serving children below: one edited or
# deleted is applied again, one unchanged is not rewritten at every resync.
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["list", "watch", "patch", "create", "delete"]
# A Job's result is its Pods' termination messages, listed once when the Job has finished.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Serving: the BentoML Deployment and its Service, applied server-side; the Deployment's rollout is read
# from the watch.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "patch", "create"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "patch", "create"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "patch", "create", "delete"]
# OnlineLearning: the learner's own ServiceAccount, and a Role and RoleBinding that let it hold its Lease
# and nothing else (applied server-side; owned by the MLWorkflow, so they go with it). Watched, so an
# unchanged one is not rewritten at every resync.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["list", "watch", "patch", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch", "patch", "create"]
# OnlineLearning: the learner's single-writer Lease, created (metadata only) and watched for the holder and
# the progress the learner writes on it. RBAC lets a Role grant only verbs its writer holds: the learner's
# Role grants get, update and patch, hence update here.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "list", "watch", "patch", "create", "update"]
{{- end }}

{{/*
checkov (tests/integration/test_chart_checkov.py) skips that follow from values: each says which value
to set instead. With image.digest and networkPolicy.enabled set, none of them is left.
*/}}
{{- define "mlworkflow-operator.checkovValueSkips" -}}
{{- if not .Values.image.digest }}
checkov.io/skip-digest: CKV_K8S_43=image.digest is empty; set it to pin the image (the chart cannot know your build's digest)
{{- if ne .Values.image.pullPolicy "Always" }}
checkov.io/skip-pull: CKV_K8S_15=no image.digest; IfNotPresent keeps a node's copy of the tag; set image.digest or image.pullPolicy Always
{{- end }}
{{- end }}
{{- if not .Values.networkPolicy.enabled }}
checkov.io/skip-netpol: CKV2_K8S_6=networkPolicy.enabled is false (it needs a CNI that enforces NetworkPolicies); set it to true
{{- end }}
{{- end }}
