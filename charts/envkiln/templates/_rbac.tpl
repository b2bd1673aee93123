{{/*
The operator's permissions, written once (tests/integration/test_chart.py compares them with
harness.rbac.OPERATOR_PERMISSIONS and runs the operator under them).

envkiln.rbac.namespaced: on namespaced objects. Watching all namespaces they go into the
ClusterRole; with operator.watchNamespaces, into a Role in each watched namespace.
envkiln.rbac.clusterScoped: on cluster-scoped objects, which no Role can grant; always in the
ClusterRole.
*/}}
{{- define "envkiln.rbac.namespaced" -}}
# Kopf watches both kinds and patches its annotations onto them; the operator reads them.
- apiGroups: ["envkiln.dev"]
  resources: ["environments", "environmentbuilds"]
  verbs: ["get", "list", "watch", "patch"]
# An EnvironmentBuild per definition hash (create-or-get); old finished ones that no Environment
# keeps are deleted (operator.buildHistoryLimit).
- apiGroups: ["envkiln.dev"]
  resources: ["environmentbuilds"]
  verbs: ["create", "delete"]
# The operator creates anonymous Environments for gated pods with inline definitions (never the webhook).
- apiGroups: ["envkiln.dev"]
  resources: ["environments"]
  verbs: ["create"]
- apiGroups: ["envkiln.dev"]
  resources: ["environments/status", "environmentbuilds/status"]
  verbs: ["get", "patch"]
# Build Jobs: created, read, and watched for their outcome; deleted when their pod cannot be
# created (quota, admission), to give the build slot back.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Users' ConfigMap contexts are read; rendered contexts are created.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create"]
# Build pods' termination messages; pods waiting for an environment get its image and lose the
# scheduling gate, or a condition saying why it failed.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["patch"]
# The push credential copied for one build Job (owned by the Job), deleted when the attempt
# ends. Never read: no Secret in a build namespace can be read by the operator.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
# The imagePullSecrets of a namespace's pull service account (builds.pullServiceAccount): their
# names only; the build pod mounts those Secrets, the operator never reads them.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get"]
# Events about Environments, builds and pods; the Job controller's events say why a build pod
# cannot be created.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
# Kopf peering, watching given namespaces: a KopfPeering in each of them (peering.yaml).
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}

{{- define "envkiln.rbac.clusterScoped" -}}
# The webhook's MutatingWebhookConfiguration (cluster-scoped), this release's only: the operator
# reads it and patches in the caBundle of the CA it keeps (webhookcert.patch_ca_bundle).
- apiGroups: ["admissionregistration.k8s.io"]
  resources: ["mutatingwebhookconfigurations"]
  resourceNames: [{{ include "envkiln.fullname" . | quote }}]
  verbs: ["get", "patch"]
# Kopf's namespace observer: watching given namespaces, it lists and watches Namespaces so that a
# watched namespace created (or deleted) after the start is noticed (without this rule Kopf
# assumes they exist and warns). Names and labels only, nothing inside them.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
# Kopf's resource observer: notices CRDs installed or upgraded after the start.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end -}}
