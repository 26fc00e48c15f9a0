{{- define "plaintap.name" -}}{{ .Chart.Name }}{{- end -}}
{{- define "plaintap.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- define "plaintap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "plaintap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "plaintap.labels" -}}
{{ include "plaintap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "plaintap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "plaintap.fullname" .) .Values.serviceAccount.name }}
{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "plaintap.runtimeFlag" -}}
{{- $flags := dict "containerd" "--containerd-socket" "docker" "--docker-socket" "cri-o" "--cri-runtime-socket" -}}
{{- get $flags .Values.runtime.kind -}}
{{- end -}}
