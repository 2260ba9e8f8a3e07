{{- define "blobcache.name" -}}containerd-blobcache{{- end -}}

{{- define "blobcache.fullname" -}}
{{- if contains "containerd-blobcache" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-containerd-blobcache" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "blobcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "blobcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "blobcache.labels" -}}
{{ include "blobcache.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "blobcache.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The port of a host:port value. */}}
{{- define "blobcache.port" -}}
{{ splitList ":" . | last }}
{{- end -}}

{{- define "blobcache.validate" -}}
{{- if not (has .Values.mode (list "mirror" "proxy")) -}}
{{- fail (printf "mode %q is not mirror or proxy" .Values.mode) -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (or (hasPrefix "127." .Values.metrics.address) (hasPrefix "localhost:" .Values.metrics.address) (hasPrefix "[::1]" .Values.metrics.address)) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.address reachable by Prometheus (e.g. \"0.0.0.0:5056\"), not loopback" -}}
{{- end -}}
{{- if and .Values.credentials.secretName (not (or .Values.credentials.credentialsFileKey .Values.credentials.dockerConfigKey)) -}}
{{- fail "credentials.secretName needs credentials.credentialsFileKey or credentials.dockerConfigKey" -}}
{{- end -}}
{{- end -}}
