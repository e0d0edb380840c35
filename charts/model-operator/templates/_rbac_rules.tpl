{{/* RBAC rules shared by the ClusterRole and the per-namespace Roles (templates/rbac.yaml). */}}

{{- define "model-operator.rules.observation" -}}
# Framework (kopf): notice resource kinds (CRDs) appearing and going away.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if not (empty .Values.watchNamespaces) }}
# Framework (kopf): notice the watched namespaces appearing and going away.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}

{{/* Args: (list $ "clusterkopfpeerings"|"kopfpeerings"). */}}
{{- define "model-operator.rules.peering" -}}
{{- $root := index . 0 -}}{{- $resource := index . 1 -}}
# Framework (kopf peering, leader election): see the other replicas' keep-alives...
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  verbs: [list, watch]
# ...and write our own, in our peering object only.
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  resourceNames: [{{ include "model-operator.peeringName" $root | quote }}]
  verbs: [get, patch]
{{- end -}}

{{- define "model-operator.rules.events" -}}
# Framework (kopf) and application: Events on ModelDeployments (kopf.event).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}

{{- define "model-operator.rules.application" -}}
# Application: ModelDeployments. kopf lists and watches them and patches its annotations and
# finalizer; the built-in autoscaler patches spec.serving.replicas.
- apiGroups: [serving.model-operator.io]
  resources: [modeldeployments]
  verbs: [list, watch, patch]
# Application: status (phase, conditions, artifact, scaling, rollout) via the status subresource.
- apiGroups: [serving.model-operator.io]
  resources: [modeldeployments/status]
  verbs: [patch]
# Application: children get an ownerReference with blockOwnerDeletion (kopf.adopt); clusters with
# the OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: [serving.model-operator.io]
  resources: [modeldeployments/finalizers]
  verbs: [update]
# Application: optimization, autotune and artifact-cleanup Jobs (server-side apply = create/patch;
# the finalizer reads and deletes them).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
# Application: worker and Triton pods are watched for status (termination messages, crash loops);
# never written, never exec'd.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Application, the children below: `get` reads one by name before creating it, so an object that
# already holds the name and is not the ModelDeployment's is found and left alone (ChildConflict).
# Application: Triton serving Deployments (stable and canary tracks; the canary is deleted on promotion).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
# Application: the Triton Service of each ModelDeployment (garbage-collected with it).
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# Application: PodDisruptionBudgets of Triton fleets with more than one replica.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# Application: ServiceMonitors for Triton's metrics (only used where the Prometheus operator is installed).
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch]
# Application: autoscaling engines `hpa` and `keda` (the built-in engine patches the ModelDeployment);
# watched so an engine object someone deleted or edited is put back.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
{{- if eq .Values.artifactStore.type "s3" }}
# Application (S3 artifact store): each ModelDeployment's access Secret of pre-signed URLs, written
# with server-side apply (create/patch). Never get, list or watch: the operator reads no Secret of
# a tenant's, and the store's keys reach it from its own namespace through its pod's envFrom.
- apiGroups: [""]
  resources: [secrets]
  verbs: [create, patch]
{{- end }}
{{- with .Values.rbac.secrets.names }}
# Application (opt-in, rbac.secrets.names): read these Secrets by name; no list, no watch.
- apiGroups: [""]
  resources: [secrets]
  resourceNames: {{ toJson . }}
  verbs: [get]
{{- end }}
{{- end -}}
