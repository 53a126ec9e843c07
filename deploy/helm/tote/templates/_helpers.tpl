{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "tote.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name for namespaced objects. */}}
{{- define "tote.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tote.labels" -}}
app.kubernetes.io/name: {{ include "tote.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tote
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tote.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tote.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tote.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tote.controllerServiceAccount" -}}
{{- .Values.serviceAccount.controller.name | default "tote-controller" -}}
{{- end -}}

{{- define "tote.agentServiceAccount" -}}
{{- .Values.serviceAccount.agent.name | default "tote-agent" -}}
{{- end -}}
