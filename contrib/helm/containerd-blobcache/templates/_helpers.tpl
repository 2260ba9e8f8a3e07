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

{{/* The headless Service through which the peers find each other. */}}
{{- define "blobcache.peerService" -}}
{{- printf "%s-peers" (include "blobcache.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* peer.dns_name: the headless Service's name in the cluster's DNS. */}}
{{- define "blobcache.peerDNSName" -}}
{{- printf "%s.%s.svc.%s" (include "blobcache.peerService" .) .Release.Namespace .Values.clusterDomain -}}
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
{{- if .Values.peer.enabled -}}
{{- if not (or .Values.peer.keySecretName .Values.peer.tls.secretName) -}}
{{- fail "peer.enabled needs peer.keySecretName or peer.tls.secretName: the peers answer only authenticated peers" -}}
{{- end -}}
{{- if and .Values.peer.keySecretName (not .Values.peer.keySecretKey) -}}
{{- fail "peer.keySecretName needs peer.keySecretKey, the Secret's key holding the shared key" -}}
{{- end -}}
{{- $port := int .Values.peer.port -}}
{{- if or (lt $port 1) (gt $port 65535) (ne (float64 $port) (float64 .Values.peer.port)) -}}
{{- fail (printf "peer.port %v is not a port" .Values.peer.port) -}}
{{- end -}}
{{- if has (toString $port) (list (include "blobcache.port" .Values.mirror.address) (include "blobcache.port" .Values.metrics.address)) -}}
{{- fail (printf "peer.port %d is also the mirror's or the metrics' port (all three are host ports)" $port) -}}
{{- end -}}
{{- if not .Values.clusterDomain -}}
{{- fail "clusterDomain is empty: the peers' dns_name needs it" -}}
{{- end -}}
{{- end -}}
{{- end -}}
