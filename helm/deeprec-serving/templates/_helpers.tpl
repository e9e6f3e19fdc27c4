{{- define "deeprec-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "deeprec-serving.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "deeprec-serving.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "deeprec-serving.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "deeprec-serving.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "deeprec-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "deeprec-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "deeprec-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "deeprec-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "deeprec-serving.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when the operator may get Secrets (rbac.secretCheck; unset: only where the grant
     stays in the watched namespaces, never cluster-wide by default), else "". */}}
{{- define "deeprec-serving.secretCheck" -}}
{{- if kindIs "invalid" .Values.rbac.secretCheck -}}
{{- if .Values.watchNamespaces }}true{{ end -}}
{{- else if .Values.rbac.secretCheck -}}
true
{{- end -}}
{{- end -}}

{{/* "true" when the operator may create Secrets (rbac.tokenSecrets, default on), which it
     does only for a model asking for a generated bearer token. It rides on Secret get (the
     operator reads a Secret before creating it), so it follows rbac.secretCheck. */}}
{{- define "deeprec-serving.tokenSecrets" -}}
{{- if and (include "deeprec-serving.secretCheck" .) (ne (toString .Values.rbac.tokenSecrets) "false") -}}
true
{{- end -}}
{{- end -}}

{{/* The rules the operator needs where DeepRecModels live (namespaced Role, or ClusterRole
     when watching every namespace). Secrets, only with rbac.secretCheck: get, to report a
     missing Secret or key as a Degraded condition instead of creating pods that cannot start and
     to read the CA, client certificate and token its status probe uses for secured models; and
     create (rbac.tokenSecrets) for the per-model token Secret it generates. No list or watch:
     it reads Secrets by name only. Children are written with server-side apply (create + patch)
     and removed by the garbage collector; the one delete is of a NetworkPolicy the operator made
     and the model no longer asks for. */}}
{{- define "deeprec-serving.namespacedRules" -}}
- apiGroups: [serving.deeprec.io]
  resources: [deeprecmodels]
  verbs: [get, list, watch, patch]
- apiGroups: [serving.deeprec.io]
  resources: [deeprecmodels/status]
  verbs: [get, patch]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: [serving.deeprec.io]
  resources: [deeprecmodels/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, patch]
{{- if include "deeprec-serving.secretCheck" . }}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get{{ if include "deeprec-serving.tokenSecrets" . }}, create{{ end }}]
{{- end }}
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
