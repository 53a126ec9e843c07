{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "tote.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name for namespaced objects. */}}
{{- define "tote.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name for cluster-scoped objects: release names are unique per namespace only, so the
namespace is part of it (two releases called "tote" in two namespaces never collide). */}}
{{- define "tote.clusterName" -}}
{{- printf "%s-%s" (include "tote.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" -}}
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
{{- .Values.serviceAccount.controller.name | default (printf "%s-controller" (include "tote.fullname" .)) -}}
{{- end -}}

{{- define "tote.agentServiceAccount" -}}
{{- .Values.serviceAccount.agent.name | default (printf "%s-agent" (include "tote.fullname" .)) -}}
{{- end -}}

{{- define "tote.configMapName" -}}
{{- .Values.killSwitch.configMapName | default (printf "%s-config" (include "tote.fullname" .)) -}}
{{- end -}}

{{- define "tote.leaseName" -}}
{{- .Values.controller.leaseName | default (printf "%s-controller" (include "tote.fullname" .)) -}}
{{- end -}}

{{/* The label selector the controller finds this release's agent pods with. */}}
{{- define "tote.agentSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=agent" (include "tote.name" .) .Release.Name -}}
{{- end -}}

{{/* TLS: where a role's certificate, key and CA come from.
Returns YAML {secret, cert, key, ca} for role "controller" or "agent". */}}
{{- define "tote.tlsSource" -}}
{{- $role := .role -}}
{{- with .root -}}
{{- if .Values.tls.existingSecret }}
secret: {{ .Values.tls.existingSecret }}
cert: {{ $role }}.crt
key: {{ $role }}.key
ca: ca.crt
{{- else }}
secret: {{ printf "%s-%s-tls" (include "tote.fullname" .) $role }}
cert: tls.crt
key: tls.key
ca: ca.crt
{{- end }}
{{- end -}}
{{- end -}}

{{/* Flags for mTLS (mounted at /etc/tote/tls) or the explicit opt-out. */}}
{{- define "tote.tlsArgs" -}}
{{- if .Values.tls.enabled }}
- --tls-cert=/etc/tote/tls/tls.crt
- --tls-key=/etc/tote/tls/tls.key
- --tls-ca=/etc/tote/tls/ca.crt
{{- else }}
- --insecure
{{- end }}
{{- end -}}

{{/* The TLS volume for a role: only that role's certificate and key, plus the CA. */}}
{{- define "tote.tlsVolume" -}}
{{- $src := include "tote.tlsSource" . | fromYaml -}}
- name: tls
  secret:
    secretName: {{ $src.secret }}
    defaultMode: 0440
    items:
      - {key: {{ $src.cert }}, path: tls.crt}
      - {key: {{ $src.key }}, path: tls.key}
      - {key: {{ $src.ca }}, path: ca.crt}
{{- end -}}

{{/* A hostPath whose path may contain $(NODE_NAME): the part before it becomes the volume,
the rest a subPathExpr (kubelet expands it from the container's NODE_NAME env). Input:
{name, path, mountPath, readOnly}; renders "volume" and "mount" YAML under those keys. */}}
{{- define "tote.nodePath" -}}
{{- $parts := splitList "$(NODE_NAME)" .path -}}
{{- if gt (len $parts) 1 -}}
{{- $base := index $parts 0 | trimSuffix "/" | default "/" -}}
{{- $sub := trimPrefix (printf "%s/" $base) .path | trimPrefix "/" -}}
volume:
  name: {{ .name }}
  hostPath: {path: {{ $base | quote }}, type: Directory}
mount:
  name: {{ .name }}
  mountPath: {{ .mountPath }}
  subPathExpr: {{ $sub | quote }}
  readOnly: {{ .readOnly }}
{{- else -}}
volume:
  name: {{ .name }}
  hostPath: {path: {{ .path | quote }}, type: Directory}
mount:
  name: {{ .name }}
  mountPath: {{ .mountPath }}
  readOnly: {{ .readOnly }}
{{- end -}}
{{- end -}}

{{/* NetworkPolicy pieces: who may scrape metrics (empty list: anyone); DNS egress. */}}
{{- define "tote.np.metricsFrom" }}
{{- with .Values.networkPolicy.metricsFrom }}
      from:
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- end }}

{{- define "tote.np.dns" }}
    - ports:
        - {protocol: UDP, port: 53}
        - {protocol: TCP, port: 53}
{{- end }}

{{/* Checks a JSON schema cannot express; a failed check stops rendering with the reason, so
no release ever holds a pod that would refuse to start. */}}
{{- define "tote.validate" -}}
{{- $a := .Values.agent -}}
{{- $c := .Values.controller -}}
{{- if or (eq (int $a.grpcPort) (int $a.metricsPort)) (eq (int $a.grpcPort) (int $a.dataPort)) (eq (int $a.metricsPort) (int $a.dataPort)) -}}
{{- fail "agent.grpcPort, agent.dataPort and agent.metricsPort must be three different ports" -}}
{{- end -}}
{{- if eq (int $c.metricsPort) (int $c.healthPort) -}}
{{- fail "controller.metricsPort and controller.healthPort must differ" -}}
{{- end -}}
{{- if and $c.hostNetwork $a.hostNetwork (has (int $a.grpcPort) (list (int $c.metricsPort) (int $c.healthPort))) -}}
{{- fail "with controller and agent in the host network, controller ports must differ from agent.grpcPort" -}}
{{- end -}}
{{- if and $c.hostNetwork $a.hostNetwork (has (int $c.metricsPort) (list (int $a.metricsPort) (int $a.dataPort))) -}}
{{- fail "with controller and agent in the host network, controller.metricsPort must differ from the agent's ports" -}}
{{- end -}}
{{- if and $c.hostNetwork $a.hostNetwork (has (int $c.healthPort) (list (int $a.metricsPort) (int $a.dataPort))) -}}
{{- fail "with controller and agent in the host network, controller.healthPort must differ from the agent's ports" -}}
{{- end -}}
{{- if ne (empty .Values.apiServer.host) (empty (toString .Values.apiServer.port)) -}}
{{- fail "apiServer.host and apiServer.port go together: set both or neither" -}}
{{- end -}}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.enabled -}}
{{- fail "tls.existingSecret and tls.certManager.enabled exclude each other: pick one" -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.controller.create) (not .Values.serviceAccount.controller.name) -}}
{{- fail "serviceAccount.controller.create=false needs serviceAccount.controller.name (an existing ServiceAccount)" -}}
{{- end -}}
{{- end -}}
