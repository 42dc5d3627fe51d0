{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "pose.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pose.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pose.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pose.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pose.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "pose.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pose.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pose.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is set, else repository:tag. */}}
{{- define "pose.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* A container's resources (dict "res" ... "Values" ...) with the GPU limit added when gpu.enabled. */}}
{{- define "pose.resources" -}}
{{- $res := deepCopy .res }}
{{- if .Values.gpu.enabled }}
{{- $limits := default dict $res.limits }}
{{- $_ := set $limits .Values.gpu.resourceName .Values.gpu.count }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/* The pod's grace period, derived so SIGKILL never cuts the drain: the preStop sleep, then the service's
one drain (settings.drainTimeoutS), then its shutdown margin (SHUTDOWN_MARGIN_S in service/__main__.py:
writing the last answers), then a second for the kubelet. */}}
{{- define "pose.terminationGracePeriod" -}}
{{- add .Values.preStopSleepSeconds (int (ceil .Values.settings.drainTimeoutS)) 5 1 }}
{{- end }}
