{{- define "envkiln.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "envkiln.labels" -}}
app.kubernetes.io/name: envkiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "envkiln.selector" -}}
app.kubernetes.io/name: envkiln
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "envkiln.registry" -}}
{{- if .Values.operator.registry -}}{{ .Values.operator.registry }}
{{- else if .Values.registry.enabled -}}{{ printf "%s-registry.%s.svc.cluster.local:%d" (include "envkiln.fullname" .) .Release.Namespace (int .Values.registry.port) }}
{{- else -}}{{ fail "set operator.registry (host[:port] builds push to) or registry.enabled=true for an in-cluster registry" }}
{{- end -}}
{{- end -}}

{{- define "envkiln.peeringKind" -}}
{{- if .Values.operator.watchNamespaces -}}KopfPeering{{- else -}}ClusterKopfPeering{{- end -}}
{{- end -}}

{{/* The curated environments' namespace: never the release namespace, which holds the signing key
and the push identities (docs/security.md). */}}
{{- define "envkiln.curatedNamespace" -}}
{{- if eq .Values.curated.namespace .Release.Namespace -}}
{{- fail (printf "curated.namespace %q is the release namespace, which holds the signing key and the push identities; give curated environments a namespace of their own (default envkiln-curated)" .Values.curated.namespace) -}}
{{- end -}}
{{- .Values.curated.namespace -}}
{{- end -}}

{{/* The namespaces the operator watches, as JSON (use with fromJsonArray): [] for all namespaces;
else operator.watchNamespaces plus the curated namespace when the chart installs curated environments. */}}
{{- define "envkiln.watchNamespaces" -}}
{{- $watched := .Values.operator.watchNamespaces | default list -}}
{{- if and $watched .Values.curated.enabled -}}
{{- $watched = append $watched (include "envkiln.curatedNamespace" .) | uniq -}}
{{- end -}}
{{- toJson $watched -}}
{{- end -}}
