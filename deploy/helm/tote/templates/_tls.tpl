{{/* Where the release's certificates come from, and the checks that keep the tls.* values
consistent. Three sources, exactly one in use when tls.enabled:
- issued (default): the controller is the release's CA (--tls-issue-secrets <fullname>):
  it creates and renews Secrets <fullname>-ca, -controller-tls, -agent-tls (-webhook-tls);
  the chart renders no key material, so two renders of the same values are identical.
- tls.certManager.enabled: cert-manager Certificates into the same Secret names.
- tls.existingSecret: one Secret the user manages (controller.crt/key, agent.crt/key, ca.crt).
Controller and agents reload renewed files without a restart. */}}

{{/* "true" when the controller issues the certificates; empty otherwise. */}}
{{- define "tote.tlsIssued" -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) -}}
true
{{- end -}}
{{- end -}}

{{- define "tote.validateTLS" -}}
{{- $t := .Values.tls -}}
{{- if not $t.enabled -}}
{{- if or $t.existingSecret $t.certManager.enabled $t.certManager.issuerRef -}}
{{- fail "tls.enabled=false turns mTLS off: tls.existingSecret and tls.certManager.* would be ignored; remove them or set tls.enabled=true" -}}
{{- end -}}
{{- if ne (int $t.selfSigned.validityDays) 90 -}}
{{- fail "tls.enabled=false turns mTLS off: tls.selfSigned.validityDays would be ignored" -}}
{{- end -}}
{{- end -}}
{{- if and $t.certManager.issuerRef (not $t.certManager.enabled) -}}
{{- fail "tls.certManager.issuerRef needs tls.certManager.enabled=true" -}}
{{- end -}}
{{- if and .Values.webhook.enabled (not (or (include "tote.tlsIssued" .) (and $t.enabled $t.certManager.enabled))) -}}
{{- fail "webhook.enabled needs a serving certificate tote can get: keep the default (tls.enabled, the controller issues it) or use tls.certManager.enabled; not with tls.existingSecret or tls.enabled=false" -}}
{{- end -}}
{{- end -}}
