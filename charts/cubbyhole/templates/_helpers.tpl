{{/* The operator's image. */}}
{{- define "cubbyhole.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The operator's configuration file. */}}
{{- define "cubbyhole.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if not $config.injector.image -}}
{{- $_ := set $config.injector "image" (include "cubbyhole.image" .) -}}
{{- end -}}
{{ toYaml $config }}
{{- end -}}
