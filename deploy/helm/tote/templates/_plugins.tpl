{{- /*
One value of plugins.config as its flag writes it: strings as they are, booleans as
true/false, whole numbers without the exponent Go would print for a large float64
(YAML numbers reach templates as float64: 1000000 would otherwise become 1e+06).
*/ -}}
{{- define "tote.pluginScalar" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- printf "%d" (int64 .) -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
