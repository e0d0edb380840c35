{{/* Names ------------------------------------------------------------------------------------ */}}

{{- define "model-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "model-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "model-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "model-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "model-operator.peeringName" -}}
{{- default (include "model-operator.fullname" .) .Values.leaderElection.name -}}
{{- end -}}

{{/* Labels ----------------------------------------------------------------------------------- */}}

{{- define "model-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "model-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Not managed-by model-operator: that label marks the objects the operator itself creates. */}}
{{- define "model-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "model-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: model-operator
{{- end -}}

{{/* Images --------------------------------------------------------------------------------- */}}

{{- define "model-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "model-operator.workerImage" -}}
{{- printf "%s:%s" .Values.worker.image.repository (default .Chart.AppVersion .Values.worker.image.tag) -}}
{{- end -}}

{{- define "model-operator.tritonImage" -}}
{{- printf "%s:%s" .Values.triton.image.repository .Values.triton.image.tag -}}
{{- end -}}

{{/* Cross-field checks the JSON schema can't phrase clearly. Included by every template that
     depends on them, so `helm template` and `helm install` fail with the same message. */}}
{{- define "model-operator.validate" -}}
{{- if and .Values.rbac.namespaced (empty .Values.watchNamespaces) -}}
{{- fail "rbac.namespaced=true needs watchNamespaces: the operator's Roles are created in each watched namespace, so list them (e.g. --set watchNamespaces={team-a,team-b})" -}}
{{- end -}}
{{- if and (eq .Values.artifactStore.type "s3") (empty .Values.artifactStore.s3.bucket) -}}
{{- fail "artifactStore.type=s3 needs artifactStore.s3.bucket" -}}
{{- end -}}
{{- range $target, $pool := .Values.defaultNodePool -}}
{{- if and $pool (not (hasKey $.Values.nodePools $pool)) -}}
{{- fail (printf "defaultNodePool.%s names node pool %q, which nodePools does not define (known: %s)" $target $pool (keys $.Values.nodePools | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Triton's nv_inference_* series of all ModelDeployments, summed per ModelDeployment.
     The ModelDeployment's name is recovered from the pod name the Deployment controller gives
     (<name>-triton[-canary]-<replicaset hash>-<suffix>; see model_operator.resources.common and
     model_operator.scaling.promql), so it works for pods found by a ServiceMonitor or by pod
     discovery. Args: (list metric window). */}}
{{- define "model-operator.perMD.rate" -}}
{{- $metric := index . 0 -}}{{- $window := index . 1 -}}
sum by (namespace, modeldeployment) (label_replace(rate({{ $metric }}{pod=~".+-triton(-canary)?-[a-z0-9]+-[a-z0-9]+"}[{{ $window }}]), "modeldeployment", "$1", "pod", "(.+)-triton(?:-canary)?-[a-z0-9]+-[a-z0-9]+"))
{{- end -}}

{{- define "model-operator.perMD.bucketRate" -}}
{{- $window := . -}}
sum by (namespace, modeldeployment, le) (label_replace(rate(nv_inference_request_duration_us_bucket{pod=~".+-triton(-canary)?-[a-z0-9]+-[a-z0-9]+"}[{{ $window }}]), "modeldeployment", "$1", "pod", "(.+)-triton(?:-canary)?-[a-z0-9]+-[a-z0-9]+"))
{{- end -}}

{{- define "model-operator.perMD.p99Summary" -}}
max by (namespace, modeldeployment) (label_replace(nv_inference_request_summary_us{quantile="0.99",pod=~".+-triton(-canary)?-[a-z0-9]+-[a-z0-9]+"}, "modeldeployment", "$1", "pod", "(.+)-triton(?:-canary)?-[a-z0-9]+-[a-z0-9]+"))
{{- end -}}

{{/* An alert annotation's reference to a label, e.g. {{ $labels.namespace }}, written through
     Helm unharmed. */}}
{{- define "model-operator.alertLabel" -}}
{{- printf "{{ $labels.%s }}" . -}}
{{- end -}}

{{- define "model-operator.alertValue" -}}
{{- printf "{{ $value | humanize }}" -}}
{{- end -}}

{{/* Requests/limits as the operator's config wants them: every quantity a string (YAML may have
     parsed `cpu: 2` as a number). */}}
{{- define "model-operator.quantities" -}}
{{- $out := dict -}}
{{- range $section, $values := (. | default dict) -}}
{{- $s := dict -}}
{{- range $k, $v := ($values | default dict) -}}
{{- $_ := set $s $k (toString $v) -}}
{{- end -}}
{{- $_ := set $out $section $s -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}

{{/* The full name with a suffix, still within 63 characters. Args: (list $ "-config"). */}}
{{- define "model-operator.suffixed" -}}
{{- $root := index . 0 -}}{{- $suffix := index . 1 -}}
{{- $base := include "model-operator.fullname" $root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" -}}
{{- printf "%s%s" $base $suffix -}}
{{- end -}}
