{{/* The chart's name (nameOverride): app.kubernetes.io/name, the selector's too. */}}
{{- define "envkiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object's name (fullnameOverride, else the release name with the chart's name
when it does not contain it). At most 50 characters: objects add suffixes such as -webhook-client-ca. */}}
{{- define "envkiln.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "envkiln.name" . -}}
{{- if contains $name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}
{{- end -}}

{{- define "envkiln.labels" -}}
app.kubernetes.io/name: {{ include "envkiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "envkiln.selector" -}}
app.kubernetes.io/name: {{ include "envkiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's ServiceAccount: the chart's (serviceAccount.create) or one that exists. */}}
{{- define "envkiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "envkiln.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: with serviceAccount.create=false, name the ServiceAccount the operator runs as" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest when image.digest is set (the tag is then ignored), else
repository:tag (default tag: the chart's appVersion). */}}
{{- define "envkiln.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* Checksums of what the operator reads only when it starts (files it mounts): a change rolls the
pods. Add one line per such ConfigMap or Secret the chart renders. */}}
{{- define "envkiln.startupChecksums" -}}
{{- if and .Values.webhook.enabled .Values.webhook.clientCA }}
checksum/webhook-client-ca: {{ .Values.webhook.clientCA | sha256sum }}
{{- end }}
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

{{/* The package proxy's objects' name (Deployment, Service, NetworkPolicy, PVC). */}}
{{- define "envkiln.packageProxyName" -}}
{{- printf "%s-package-proxy" (include "envkiln.fullname" .) -}}
{{- end -}}

{{/* The package proxy's host as builds reach it: its Service's fixed address when
packageProxy.clusterIP is set, else the Service's DNS name. */}}
{{- define "envkiln.packageProxyHost" -}}
{{- .Values.packageProxy.clusterIP | default (printf "%s.%s.svc" (include "envkiln.packageProxyName" .) .Release.Namespace) -}}
{{- end -}}

{{/* builds.env as the operator gets it: with the package proxy on, PIP_INDEX_URL and PIP_TRUSTED_HOST
point at it unless builds.env sets PIP_INDEX_URL itself. */}}
{{- define "envkiln.buildEnv" -}}
{{- $env := deepCopy .Values.builds.env -}}
{{- if and .Values.packageProxy.enabled (not (hasKey $env "PIP_INDEX_URL")) -}}
{{- $host := include "envkiln.packageProxyHost" . -}}
{{- $_ := set $env "PIP_INDEX_URL" (printf "http://%s:%v/index/" $host .Values.packageProxy.port) -}}
{{- $_ := set $env "PIP_TRUSTED_HOST" (printf "%s:%v" $host .Values.packageProxy.port) -}}
{{- end -}}
{{- $env | toJson -}}
{{- end -}}
