{{/* The operator's image: by digest when image.digest is set, else by tag. */}}
{{- define "cubbyhole.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The operator's configuration file. */}}
{{- define "cubbyhole.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if not $config.injector.image -}}
{{- $_ := set $config.injector "image" (include "cubbyhole.image" .) -}}
{{- end -}}
{{- /* Helm drops a key set to null (it has a default in values.yaml); null is what the
       operator reads as "no user", so write it back. */ -}}
{{- if not (hasKey $config.injector "runAsUser") -}}
{{- $_ := set $config.injector "runAsUser" nil -}}
{{- end -}}
{{ toYaml $config }}
{{- end -}}

{{/* Scheduling and pull secrets shared by the operator's pods and the `helm test` pod. */}}
{{- define "cubbyhole.podPlacement" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
