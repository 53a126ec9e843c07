{{/* Chart name, truncated to the DNS label limit. */}}
{{- define "tote.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name of every namespaced object: "<release>" when the release name
is the chart name or starts with "<chart name>-" (release "tote": tote-controller), else
"<release>-<chart name>". Injective per namespace (release "a" → a-tote, release "a-tote" →
a-tote-tote), where Helm's usual `contains` rule gives both "a-tote". At most 49 characters,
so the longest Service name, <fullname>-agent-metrics, stays a 63-character DNS-1035 label:
a longer name keeps its first 40 characters and gets 8 hex digits of its SHA-256. */}}
{{- define "tote.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride -}}
{{- else -}}
{{- $name := include "tote.name" . -}}
{{- $full := .Release.Name -}}
{{- if not (or (eq .Release.Name $name) (hasPrefix (printf "%s-" $name) .Release.Name)) -}}
{{- $full = printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- if gt (len $full) 49 -}}
{{- $full = printf "%s-%s" ($full | trunc 40 | trimSuffix "-") (sha256sum $full | trunc 8) -}}
{{- end -}}
{{- $full -}}
{{- end -}}
{{- end -}}

{{/* Base name of cluster-scoped objects (ClusterRoles and their bindings, the
ValidatingWebhookConfiguration): "<namespace>.<fullname>", e.g. tote-system.tote. A namespace
name has no dot and the fullname is a DNS-1035 label (checked in tote.validate), so the first
dot splits it again: two releases get the same name only when they share the namespace and
the fullname, and then their namespaced objects collide first (Helm refuses the install).
At most 63 + 1 + 49 characters. */}}
{{- define "tote.clusterName" -}}
{{- printf "%s.%s" .Release.Namespace (include "tote.fullname" .) -}}
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

{{/* The image reference: repository:tag, or with image.digest repository@digest (tag
empty) or repository:tag@digest (tag set: kept for people reading it, the digest decides). */}}
{{- define "tote.image" -}}
{{- $img := .Values.image -}}
{{- if $img.digest -}}
{{- if $img.tag -}}
{{- printf "%s:%s@%s" $img.repository $img.tag $img.digest -}}
{{- else -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- end -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
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

{{/* A pod template's labels: the selector labels, the component and the component's
podLabels (tote.validate refuses podLabels that would change the selector's). Input: {root,
component}. */}}
{{- define "tote.podLabels" -}}
{{- $v := index .root.Values .component -}}
{{- include "tote.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- with $v.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling for a component's pod spec: priority class, node selector, affinity,
tolerations and (controller) topology spread; each only when set. A spread constraint without
a labelSelector counts this release's pods of that component. Input: {root, component}. */}}
{{- define "tote.scheduling" -}}
{{- $v := index .root.Values .component -}}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
{{- $sel := dict "matchLabels" (include "tote.podSelectorLabels" . | fromYaml) }}
topologySpreadConstraints:
{{- range $v.topologySpreadConstraints }}
  - {{ toJson (ternary . (merge (dict "labelSelector" $sel) .) (hasKey . "labelSelector")) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component's pods. Input: {root, component}. */}}
{{- define "tote.podSelectorLabels" -}}
{{- include "tote.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* `tote doctor`'s arguments for this release, one per line: what NOTES prints and what
the `helm test` pod runs. No agent identity: the agent rows come from the controller's
/agents (it holds the mTLS identity and stands where NetworkPolicies let agent traffic
through), with or without TLS. */}}
{{- define "tote.doctorArgs" -}}
- --namespace={{ .Release.Namespace }}
- --service={{ include "tote.controllerService" . }}
- --service-account={{ include "tote.controllerServiceAccount" . }}
- --lease={{ include "tote.leaseName" . }}
- --config-map={{ include "tote.configMapName" . }}
- --webhook={{ include "tote.clusterName" . }}
{{- if .Values.tls.enabled }}
- --tls-secret={{ (include "tote.tlsSource" (dict "root" . "role" "controller") | fromYaml).secret }}
{{- end }}
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

{{/* The controller's listening ports by flag-ish name (admission only with the webhook). */}}
{{- define "tote.controllerPorts" -}}
metricsPort: {{ .Values.controller.metricsPort }}
healthPort: {{ .Values.controller.healthPort }}
statusPort: {{ .Values.controller.statusPort }}
{{- if .Values.webhook.enabled }}
webhook.port: {{ .Values.webhook.port }}
{{- end }}
{{- end -}}

{{/* The TCP port of notifications.webhookUrl: the one written in it, else the scheme's
(443 for https, 80 for http). For the controller's NetworkPolicy egress. */}}
{{- define "tote.webhookUrlPort" -}}
{{- $u := urlParse .Values.notifications.webhookUrl -}}
{{- $explicit := regexFind ":[0-9]+$" $u.host | trimPrefix ":" -}}
{{- if $explicit -}}
{{- int $explicit -}}
{{- else -}}
{{- ternary 443 80 (eq $u.scheme "https") -}}
{{- end -}}
{{- end -}}

{{/* Names the status feed and webhook are reached by (tote status / tote doctor defaults
follow the default release: Service tote-controller, port "status"). */}}
{{- define "tote.controllerService" -}}
{{- printf "%s-controller" (include "tote.fullname" .) -}}
{{- end -}}

{{- define "tote.webhookService" -}}
{{- printf "%s-webhook" (include "tote.fullname" .) -}}
{{- end -}}

{{/* Checks a JSON schema cannot express; a failed check stops rendering with the reason, so
no release ever holds a pod that would refuse to start. */}}
{{- define "tote.validate" -}}
{{- $a := .Values.agent -}}
{{- $c := .Values.controller -}}
{{- if or (eq (int $a.grpcPort) (int $a.metricsPort)) (eq (int $a.grpcPort) (int $a.dataPort)) (eq (int $a.metricsPort) (int $a.dataPort)) -}}
{{- fail "agent.grpcPort, agent.dataPort and agent.metricsPort must be three different ports" -}}
{{- end -}}
{{- $cports := include "tote.controllerPorts" . | fromYaml -}}
{{- $seen := dict -}}
{{- range $name, $port := $cports -}}
{{- $key := toString $port -}}
{{- if hasKey $seen $key -}}
{{- fail (printf "controller ports must all differ: %s and %s are both %s (metricsPort, healthPort, statusPort, webhook.port)" (get $seen $key) $name $key) -}}
{{- end -}}
{{- $_ := set $seen $key $name -}}
{{- end -}}
{{- if and $c.hostNetwork $a.hostNetwork -}}
{{- range $name, $port := $cports -}}
{{- if has (int $port) (list (int $a.grpcPort) (int $a.metricsPort) (int $a.dataPort)) -}}
{{- fail (printf "with controller and agent in the host network, controller %s (%d) must differ from the agent's ports" $name (int $port)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $old, $new := dict "containerd" "agent" "notify" "webhook" -}}
{{- if has $old $.Values.plugins.disabled -}}
{{- fail (printf "plugins.disabled: the built-in plugin %s is now called %s" $old $new) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.backup.registry (has "backup" .Values.plugins.disabled) -}}
{{- fail "backup.registry needs the backup plugin: remove \"backup\" from plugins.disabled" -}}
{{- end -}}
{{- if and .Values.registryResolve.enabled (has "registry" .Values.plugins.disabled) -}}
{{- fail "registryResolve.enabled needs the registry plugin: remove \"registry\" from plugins.disabled" -}}
{{- end -}}
{{- if and (not .Values.backup.registry) (or .Values.backup.secretName .Values.backup.insecure .Values.backup.caConfigMap) -}}
{{- fail "backup.secretName, backup.insecure and backup.caConfigMap need backup.registry" -}}
{{- end -}}
{{- $nt := .Values.notifications -}}
{{- if and $nt.webhookUrl (has "webhook" .Values.plugins.disabled) -}}
{{- fail "notifications.webhookUrl needs the webhook plugin: remove \"webhook\" from plugins.disabled" -}}
{{- end -}}
{{- if and (not $nt.webhookUrl) (or $nt.events (ne $nt.format "json") $nt.signingSecret.name $nt.signingSecret.key) -}}
{{- fail "notifications.events, notifications.format and notifications.signingSecret need notifications.webhookUrl" -}}
{{- end -}}
{{- if ne (empty .Values.apiServer.host) (empty (toString .Values.apiServer.port)) -}}
{{- fail "apiServer.host and apiServer.port go together: set both or neither" -}}
{{- end -}}
{{- if and .Values.tls.existingSecret .Values.tls.certManager.enabled -}}
{{- fail "tls.existingSecret and tls.certManager.enabled exclude each other: pick one" -}}
{{- end -}}
{{- $full := include "tote.fullname" . -}}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $full) -}}
{{- fail (printf "object names start with %q, which is no DNS-1035 label (a letter first, then letters, digits and '-'; Service names must be): pick another release name or set fullnameOverride" $full) -}}
{{- end -}}
{{- range $component := list "controller" "agent" -}}
{{- $v := index $.Values $component -}}
{{- range $key, $_ := $v.podLabels -}}
{{- if hasKey (include "tote.podSelectorLabels" (dict "root" $ "component" $component) | fromYaml) $key -}}
{{- fail (printf "%s.podLabels.%s: the chart sets this label (the workload's selector needs it)" $component $key) -}}
{{- end -}}
{{- end -}}
{{- $own := list "NODE_NAME" "HOST_IP" "POD_NAME" "POD_NAMESPACE" "KUBERNETES_SERVICE_HOST" "KUBERNETES_SERVICE_PORT" -}}
{{- $seenEnv := dict -}}
{{- range $v.extraEnv -}}
{{- if has .name $own -}}
{{- fail (printf "%s.extraEnv: %s is set by the chart (for KUBERNETES_SERVICE_* use apiServer.host/port)" $component .name) -}}
{{- end -}}
{{- if hasKey $seenEnv .name -}}
{{- fail (printf "%s.extraEnv: %s is listed twice" $component .name) -}}
{{- end -}}
{{- $_ := set $seenEnv .name true -}}
{{- end -}}
{{- end -}}
{{- if .Values.podSecurity.checkNamespace -}}
{{- $ns := lookup "v1" "Namespace" "" .Release.Namespace | default dict -}}
{{- $level := dig "metadata" "labels" "pod-security.kubernetes.io/enforce" "" $ns -}}
{{- if has $level (list "baseline" "restricted") -}}
{{- fail (printf "namespace %s enforces Pod Security %q, but the agent needs \"privileged\" (hostPath volumes, root): kubectl label namespace %s pod-security.kubernetes.io/enforce=privileged --overwrite (or podSecurity.checkNamespace=false when an exemption admits the agent)" .Release.Namespace $level .Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.serviceAccount.controller.create) (not .Values.serviceAccount.controller.name) -}}
{{- fail "serviceAccount.controller.create=false needs serviceAccount.controller.name (an existing ServiceAccount)" -}}
{{- end -}}
{{- end -}}
