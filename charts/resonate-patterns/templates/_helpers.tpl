{{/*
Helpers shared by every template of the resonate-patterns chart.

Names follow the usual Helm conventions: every generated name is trimmed to
63 characters (the limit of a DNS label and of a label value) without a
trailing "-". Selector labels never carry the chart or app version, so an
upgrade never changes an immutable Deployment selector.
*/}}

{{/*
The chart name, or nameOverride. Used in app.kubernetes.io/name.
*/}}
{{- define "resonate-patterns.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified app name: the prefix of every resource name.
fullnameOverride wins; a release name that already contains the chart name
is used alone (release "resonate-patterns" -> "resonate-patterns"), otherwise
"<release>-<chart name>".
*/}}
{{- define "resonate-patterns.fullname" -}}
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

{{/*
"<chart name>-<chart version>" for the helm.sh/chart label ("+" is not
allowed in label values).
*/}}
{{- define "resonate-patterns.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (no versions). Callers add
app.kubernetes.io/component (and resonate-patterns.io/group for workers).
*/}}
{{- define "resonate-patterns.selectorLabels" -}}
app.kubernetes.io/name: {{ include "resonate-patterns.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels of every object: the selector labels plus chart, version,
manager and the user's commonLabels.
*/}}
{{- define "resonate-patterns.labels" -}}
helm.sh/chart: {{ include "resonate-patterns.chart" . }}
{{ include "resonate-patterns.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "resonate-patterns.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount the worker pods run as (they never call the
Kubernetes API; their token is not mounted).
*/}}
{{- define "resonate-patterns.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-worker" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-") .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as (bound to its Role or
ClusterRole).
*/}}
{{- define "resonate-patterns.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-") .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the ServiceAccount the Resonate server runs as.
*/}}
{{- define "resonate-patterns.server.serviceAccountName" -}}
{{- if .Values.server.serviceAccount.create }}
{{- default (printf "%s-server" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-") .Values.server.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.server.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Resonate server's Deployment, Service and PVC.
*/}}
{{- define "resonate-patterns.server.fullname" -}}
{{- printf "%s-server" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the server's PersistentVolumeClaim (SQLite storage).
*/}}
{{- define "resonate-patterns.server.dataName" -}}
{{- printf "%s-server-data" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the Secret the chart creates for server.storage.postgres.url.
*/}}
{{- define "resonate-patterns.server.postgresSecretName" -}}
{{- printf "%s-server-postgres" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Resonate server release this chart is written for: the tag of the
resonate-patterns.io/server-image annotation in Chart.yaml ("v0.9.8").
server.image.tag must equal it unless server.allowUntestedImage is true.
*/}}
{{- define "resonate-patterns.server.testedTag" -}}
{{- $image := index .Chart.Annotations "resonate-patterns.io/server-image" }}
{{- regexReplaceAll "^.*:" $image "" }}
{{- end }}

{{/*
The server image reference: "repository:tag", or "repository:tag@digest"
when server.image.digest is set (the runtime then pulls by digest).
*/}}
{{- define "resonate-patterns.server.image" -}}
{{- $i := .Values.server.image }}
{{- printf "%s:%s" (include "resonate-patterns.registry" (dict "root" . "repository" $i.repository)) (toString $i.tag) }}
{{- with $i.digest }}@{{ . }}{{ end }}
{{- end }}

{{/*
Mount path of the directory holding the server's public key, and the key's
file name in it (RESONATE_AUTH__PUBLICKEY is the two joined).
*/}}
{{- define "resonate-patterns.server.authKeyDir" -}}
/etc/resonate/auth
{{- end }}
{{- define "resonate-patterns.server.authKeyFile" -}}
public.pem
{{- end }}

{{/*
Name of the ConfigMap the chart creates for auth.publicKey.pem.
*/}}
{{- define "resonate-patterns.auth.publicKeyName" -}}
{{- printf "%s-auth-public-key" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name and key of the Secret holding the token (auth.token.existingSecret, or
the Secret the chart creates for auth.token.value).
*/}}
{{- define "resonate-patterns.auth.tokenSecretName" -}}
{{- if .Values.auth.token.existingSecret }}
{{- .Values.auth.token.existingSecret }}
{{- else }}
{{- printf "%s-auth-token" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The RESONATE_TOKEN env entry (a secretKeyRef; the token never appears in a
pod spec) of every pod that calls the server, when auth is on. Indent with
nindent at the env list's level.
*/}}
{{- define "resonate-patterns.auth.tokenEnv" -}}
{{- if .Values.auth.enabled }}
- name: RESONATE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "resonate-patterns.auth.tokenSecretName" . }}
      key: {{ .Values.auth.token.secretKey }}
{{- end }}
{{- end }}

{{/*
Pod annotation that restarts a pod when the chart-created token Secret
changes (env from a Secret is read only at container start). Empty when the
token comes from an existing Secret or auth is off.
*/}}
{{- define "resonate-patterns.auth.tokenChecksum" -}}
{{- if and .Values.auth.enabled (not .Values.auth.token.existingSecret) }}
checksum/auth-token: {{ .Values.auth.token.value | sha256sum }}
{{- end }}
{{- end }}

{{/*
Names of the environment variables the chart sets on the server container
itself (server.extraEnv must not repeat them: duplicate names are rejected by
server-side apply).
*/}}
{{- define "resonate-patterns.server.envNames" -}}
RESONATE_SERVER__BIND RESONATE_SERVER__PORT RESONATE_SERVER__URL RESONATE_OBSERVABILITY__METRICS_PORT RESONATE_LEVEL RESONATE_TASKS__RETRY_TIMEOUT RESONATE_MESSAGES__POLL_INTERVAL RESONATE_STORAGE__TYPE RESONATE_STORAGE__SQLITE__PATH RESONATE_STORAGE__POSTGRES__URL RESONATE_STORAGE__POSTGRES__POOL_SIZE PGPASSWORD RESONATE_AUTH__PUBLICKEY RESONATE_AUTH__ISS RESONATE_AUTH__AUD
{{- end }}

{{/*
Name of the operator's Deployment and Service.
*/}}
{{- define "resonate-patterns.operator.fullname" -}}
{{- printf "%s-operator" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Name of one worker group's Deployment, Service, PodDisruptionBudget and
WorkerAutoscaler: "<fullname>-worker-<group>". Call with
(dict "root" $ "group" "<group name>").
*/}}
{{- define "resonate-patterns.worker.fullname" -}}
{{- printf "%s-worker-%s" (include "resonate-patterns.fullname" .root) .group | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of one worker group's pods. Call with (dict "root" $ "group" "<name>").
*/}}
{{- define "resonate-patterns.worker.selectorLabels" -}}
{{ include "resonate-patterns.selectorLabels" .root }}
app.kubernetes.io/component: worker
resonate-patterns.io/group: {{ .group }}
{{- end }}

{{/*
The URL workers, the operator and the helm test use to reach the Resonate
server: the in-cluster Service ("http://<svc>.<namespace>.svc:<port>", so a
cluster-wide operator in another namespace resolves it too), or
server.externalUrl when the chart does not run a server.
*/}}
{{- define "resonate-patterns.serverUrl" -}}
{{- if .Values.server.enabled }}
{{- printf "http://%s.%s.svc:%d" (include "resonate-patterns.server.fullname" .) .Release.Namespace (int .Values.server.port) }}
{{- else }}
{{- .Values.server.externalUrl | trimSuffix "/" }}
{{- end }}
{{- end }}

{{/*
The image reference "repository:tag" of the resonate-patterns image (tag
defaults to the chart's appVersion). A tag that already carries a digest
("v1@sha256:...") is used as is; image.digest, when set, wins over the tag
("repository@sha256:..."). global.imageRegistry prefixes the repository.
*/}}
{{- define "resonate-patterns.image" -}}
{{- $repository := include "resonate-patterns.registry" (dict "root" . "repository" .Values.image.repository) }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion (toString .Values.image.tag)) }}
{{- end }}
{{- end }}

{{/*
A number as an environment variable value: integers without a decimal point
or exponent (Helm reads YAML numbers as float64, which prints 1000000 as
"1e+06"), other numbers as they are.
*/}}
{{- define "resonate-patterns.number" -}}
{{- $f := float64 . }}
{{- if eq $f (float64 (int64 $f)) }}{{ int64 $f }}{{ else }}{{ $f }}{{ end }}
{{- end }}

{{/*
The port every resonate-patterns process (worker and operator) serves
/healthz, /readyz and /metrics on (RESONATE_PATTERNS_HTTP_PORT).
*/}}
{{- define "resonate-patterns.httpPort" -}}
9400
{{- end }}

{{/*
Deep-merge the map .src into the map .dst in place: nested maps are merged
key by key, anything else in .src replaces the value in .dst -- including
false, 0, "" and null, which sprig's mergeOverwrite would silently skip.
*/}}
{{- define "resonate-patterns.deepMerge" -}}
{{- $dst := .dst }}
{{- range $key, $value := .src }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) }}
{{- include "resonate-patterns.deepMerge" (dict "dst" (get $dst $key) "src" $value) }}
{{- else }}
{{- $_ := set $dst $key $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The effective settings of one worker group as YAML: workerDefaults
deep-merged with the group's own entry of workerGroups. Call with
(dict "root" $ "group" <entry>) and read it back with fromYaml.
*/}}
{{- define "resonate-patterns.workerGroup" -}}
{{- $merged := deepCopy .root.Values.workerDefaults }}
{{- include "resonate-patterns.deepMerge" (dict "dst" $merged "src" (deepCopy .group)) }}
{{- toYaml $merged }}
{{- end }}

{{/*
Whether the operator uses kopf peering ("true" or ""): when asked to, or
whenever it runs more than one replica (peering is what keeps only one of
them acting).
*/}}
{{- define "resonate-patterns.operator.peering" -}}
{{- if and .Values.operator.enabled (or .Values.operator.peering.enabled (gt (int .Values.operator.replicas) 1)) }}true{{ end }}
{{- end }}

{{/*
The value of RESONATE_PATTERNS_OPERATOR_PEERING: the peering object's name,
or "standalone" when peering is off.
*/}}
{{- define "resonate-patterns.operator.peeringName" -}}
{{- if include "resonate-patterns.operator.peering" . }}{{ include "resonate-patterns.operator.peeringObjectName" . }}{{ else }}standalone{{ end }}
{{- end }}

{{/*
Name of the operator's cluster-scoped objects (ClusterRole, ClusterRoleBinding,
ClusterKopfPeering): "<namespace>-<operator fullname>", so that releases of the
same name in two namespaces do not take each other's. Cluster-scoped names may
be 253 characters long; no trimming needed.
*/}}
{{- define "resonate-patterns.operator.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "resonate-patterns.operator.fullname" .) }}
{{- end }}

{{/*
Name of the kopf peering object: operator.peering.name, or derived from the
release -- the operator's fullname for a KopfPeering (namespaced), the
namespace-qualified clusterName for a ClusterKopfPeering -- so that the
operators of two releases never peer with (and pause) each other.
*/}}
{{- define "resonate-patterns.operator.peeringObjectName" -}}
{{- if .Values.operator.peering.name }}
{{- .Values.operator.peering.name }}
{{- else if .Values.operator.clusterWide }}
{{- include "resonate-patterns.operator.clusterName" . }}
{{- else }}
{{- include "resonate-patterns.operator.fullname" . }}
{{- end }}
{{- end }}

{{/*
The value of RESONATE_PATTERNS_OPERATOR_SELECTOR: "key=value,..." (sorted by
key) of the labels a WorkerAutoscaler must carry for this release's operator to
act on it -- app.kubernetes.io/instance=<release> (operator.selector.ownRelease;
every WorkerAutoscaler of the chart carries it) and operator.selector.matchLabels.
Empty: the operator acts on every WorkerAutoscaler it watches.
*/}}
{{- define "resonate-patterns.operator.selector" -}}
{{- $s := .Values.operator.selector }}
{{- $labels := dict }}
{{- if $s.ownRelease }}
{{- $_ := set $labels "app.kubernetes.io/instance" .Release.Name }}
{{- end }}
{{- range $key, $value := $s.matchLabels }}
{{- $_ := set $labels $key (toString $value) }}
{{- end }}
{{- $terms := list }}
{{- range $key := keys $labels | sortAlpha }}
{{- $terms = append $terms (printf "%s=%s" $key (get $labels $key)) }}
{{- end }}
{{- join "," $terms }}
{{- end }}

{{/*
Checks JSON schema cannot express (comparisons between two values, and
names that collide after trimming). Rendered by templates/validate.yaml;
each failure is one readable line naming the value to fix.
*/}}
{{- define "resonate-patterns.validate" -}}
{{- $root := . }}
{{- $s := .Values.server }}
{{- if $s.enabled }}
{{- $tested := include "resonate-patterns.server.testedTag" . }}
{{- if and (ne (toString $s.image.tag) $tested) (not $s.allowUntestedImage) }}
{{- fail (printf "server.image.tag is %q but this chart is written for the Resonate server %s (its setting names, probes and protocol 2026-04-01); set server.image.tag=%s, or server.allowUntestedImage=true to run another release at your own risk" (toString $s.image.tag) $tested $tested) }}
{{- end }}
{{- if and (not (kindIs "invalid" $s.replicas)) (ne (toString $s.replicas) "1") }}
{{- fail (printf "server.replicas is %v but the Resonate server is single-instance for every storage type (two servers on one database race for timeouts and task queues): leave server.replicas at 1" $s.replicas) }}
{{- end }}
{{- $reserved := splitList " " (include "resonate-patterns.server.envNames" .) }}
{{- range $s.extraEnv }}
{{- if has .name $reserved }}
{{- fail (printf "server.extraEnv sets %s, which the chart sets itself; use the chart's value for it (see values.yaml)" .name) }}
{{- end }}
{{- end }}
{{- $pg := $s.storage.postgres }}
{{- if and (eq $s.storage.type "postgres") $pg.existingSecret $pg.url }}
{{- fail "server.storage.postgres: set either existingSecret or url, not both" }}
{{- end }}
{{- end }}
{{- $a := .Values.auth }}
{{- if $a.enabled }}
{{- if .Values.server.enabled }}
{{- $sources := 0 }}
{{- range (list $a.publicKey.existingSecret $a.publicKey.existingConfigMap $a.publicKey.pem) }}{{ if . }}{{ $sources = add1 $sources }}{{ end }}{{ end }}
{{- if eq $sources 0 }}
{{- fail "auth.enabled is true: set auth.publicKey.existingSecret, auth.publicKey.existingConfigMap or auth.publicKey.pem (the PEM public key the server verifies tokens with)" }}
{{- end }}
{{- if gt $sources 1 }}
{{- fail "auth.publicKey: set exactly one of existingSecret, existingConfigMap and pem" }}
{{- end }}
{{- end }}
{{- if and (not $a.token.existingSecret) (not $a.token.value) }}
{{- fail "auth.enabled is true: set auth.token.existingSecret (a Secret holding the JWT workers, the operator and helm test send as RESONATE_TOKEN) or auth.token.value" }}
{{- end }}
{{- if and $a.token.existingSecret $a.token.value }}
{{- fail "auth.token: set either existingSecret or value, not both" }}
{{- end }}
{{- end }}
{{- if and .Values.server.enabled (eq .Values.server.storage.type "postgres") (not .Values.server.storage.postgres.existingSecret) (not .Values.server.storage.postgres.url) }}
{{- fail "server.storage.type is postgres: set server.storage.postgres.existingSecret (a Secret holding the connection URL) or server.storage.postgres.url" }}
{{- end }}
{{- if and (not .Values.server.enabled) (not .Values.server.externalUrl) }}
{{- fail "server.enabled is false: set server.externalUrl to the URL of the Resonate server to use" }}
{{- end }}
{{- $names := dict }}
{{- $deployments := dict }}
{{- range $i, $entry := .Values.workerGroups }}
{{- $g := include "resonate-patterns.workerGroup" (dict "root" $root "group" $entry) | fromYaml }}
{{- $where := printf "workerGroups[%d] (%s)" $i $g.name }}
{{- if hasKey $names $g.name }}
{{- fail (printf "%s: the group name %q is used twice; every worker group needs its own name" $where $g.name) }}
{{- end }}
{{- $_ := set $names $g.name true }}
{{- $deployment := include "resonate-patterns.worker.fullname" (dict "root" $root "group" $g.name) }}
{{- if hasKey $deployments $deployment }}
{{- fail (printf "%s: its resource name %q collides with another group's after trimming to 63 characters; shorten the group names or fullnameOverride" $where $deployment) }}
{{- end }}
{{- $_ := set $deployments $deployment true }}
{{- $a := $g.autoscaling }}
{{- if $a.enabled }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- fail (printf "%s: autoscaling.minReplicas (%d) must not exceed autoscaling.maxReplicas (%d)" $where (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- if not (kindIs "invalid" $a.fallbackReplicas) }}
{{- if or (lt (int $a.fallbackReplicas) (int $a.minReplicas)) (gt (int $a.fallbackReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "%s: autoscaling.fallbackReplicas (%d) must lie between autoscaling.minReplicas (%d) and autoscaling.maxReplicas (%d)" $where (int $a.fallbackReplicas) (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The WorkerAutoscaler CRD in the cluster must know every field the chart sets on a
WorkerAutoscaler. Helm installs crds/ on the first install only and never upgrades
them, and a CRD older than the chart refuses a field it lacks (Helm 4, server-side
apply: "field not declared in schema") or drops it without a word (Helm 3,
client-side apply). Fails the render naming the missing fields and the command that
upgrades the CRDs. lookup returns nothing in helm template and lint: no check there;
crds.check=false turns it off (it needs the right to read CRDs).
*/}}
{{- define "resonate-patterns.validateCrd" -}}
{{- $rendered := include (print .Template.BasePath "/workers/workerautoscaler.yaml") . }}
{{- $crdName := "workerautoscalers.resonate-patterns.io" }}
{{- $crd := dict }}
{{- if and .Values.crds.check (trim $rendered) }}
{{- $crd = lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" $crdName }}
{{- end }}
{{- if $crd }}
{{- $spec := dict }}
{{- range $crd.spec.versions }}
{{- if eq .name "v1alpha1" }}
{{- $spec = .schema.openAPIV3Schema.properties.spec }}
{{- end }}
{{- end }}
{{- $known := default dict $spec.properties }}
{{- $missing := list }}
{{- range $doc := regexSplit "(?m)^---$" $rendered -1 }}
{{- $wa := fromYaml $doc }}
{{- range $key, $value := (default dict $wa.spec) }}
{{- if not (hasKey $known $key) }}
{{- $missing = append $missing (printf "spec.%s" $key) }}
{{- else if kindIs "map" $value }}
{{- $nested := default dict (get $known $key).properties }}
{{- range $inner, $_ := $value }}
{{- if not (hasKey $nested $inner) }}
{{- $missing = append $missing (printf "spec.%s.%s" $key $inner) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- with $missing | uniq | sortAlpha }}
{{- fail (printf "the %s CRD in the cluster lacks %s, which this chart sets on WorkerAutoscalers (Helm installs crds/ on the first install only and never upgrades them); upgrade the CRDs first: kubectl apply --server-side --force-conflicts -f charts/resonate-patterns/crds/ (or: helm show crds <chart> | kubectl apply --server-side --force-conflicts -f -)" $crdName (join ", " .)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Extension points and metadata shared by every object (extraEnv, extraVolumes,
sidecars, probe overrides, commonAnnotations, global.imageRegistry).
*/}}

{{/*
An image repository with global.imageRegistry in front ("<registry>/<repository>"),
or the repository alone when no registry is set. Call with
(dict "root" $ "repository" "<repository>").
*/}}
{{- define "resonate-patterns.registry" -}}
{{- $registry := "" }}
{{- with .root.Values.global }}{{ $registry = default "" .imageRegistry }}{{ end }}
{{- if $registry }}
{{- printf "%s/%s" (trimSuffix "/" $registry) .repository }}
{{- else }}
{{- .repository }}
{{- end }}
{{- end }}

{{/*
The annotations of an object as YAML (empty when there are none):
commonAnnotations, then the object's own annotations (which win on the same
key). Call with (dict "root" $ "annotations" <map or nil>).
*/}}
{{- define "resonate-patterns.annotations" -}}
{{- $all := deepCopy (default dict .root.Values.commonAnnotations) }}
{{- range $key, $value := (default dict .annotations) }}
{{- $_ := set $all $key $value }}
{{- end }}
{{- with $all }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of a pod template: the selector labels, the manager and the user's
commonLabels. No chart or app version: a chart upgrade that changes nothing
else in a pod does not restart it. Callers add app.kubernetes.io/component
(and the group, podLabels).
*/}}
{{- define "resonate-patterns.podLabels" -}}
{{ include "resonate-patterns.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The Resonate server's version as a label value: its image tag (v0.9.8),
trimmed to 63 characters and to an alphanumeric first and last character.
*/}}
{{- define "resonate-patterns.server.version" -}}
{{- regexReplaceAll "^[^A-Za-z0-9]+|[^A-Za-z0-9]+$" (toString .Values.server.image.tag | trunc 63) "" }}
{{- end }}

{{/*
Common labels of the server's objects that describe its running version (its
Deployment): app.kubernetes.io/version is the server's image tag, not the
chart's appVersion.
*/}}
{{- define "resonate-patterns.server.labels" -}}
{{- $labels := include "resonate-patterns.labels" . | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/version" (include "resonate-patterns.server.version" .) }}
{{- toYaml $labels }}
{{- end }}

{{/*
A probe as YAML: the chart's default probe with the user's override merged
over it key by key. An override that brings its own handler (exec,
tcpSocket, grpc; httpGet when the default has none) replaces the default's.
Call with (dict "default" <probe map> "override" <map or nil>).
*/}}
{{- define "resonate-patterns.probe" -}}
{{- $probe := deepCopy .default }}
{{- $override := deepCopy (default dict .override) }}
{{- $handlers := list "httpGet" "exec" "tcpSocket" "grpc" }}
{{- range $handler := $handlers }}
{{- if and (hasKey $override $handler) (not (hasKey $probe $handler)) }}
{{- range $handlers }}{{ $_ := unset $probe . }}{{ end }}
{{- end }}
{{- end }}
{{- include "resonate-patterns.deepMerge" (dict "dst" $probe "src" $override) }}
{{- toYaml $probe }}
{{- end }}

{{/*
A map as YAML without its null entries: a security context whose runAsUser,
runAsGroup or fsGroup is set to null leaves that key out (OpenShift's
restricted SCC then assigns the ids).
*/}}
{{- define "resonate-patterns.omitNull" -}}
{{- $out := dict }}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}{{ $_ := set $out $key $value }}{{ end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
A user-supplied value (a list or map, or a string of YAML) rendered with tpl,
so it may use template expressions such as {{ .Release.Name }}. Call with
(dict "value" <value> "root" $).
*/}}
{{- define "resonate-patterns.render" -}}
{{- if kindIs "string" .value }}
{{- tpl .value .root }}
{{- else }}
{{- tpl (toYaml .value) .root }}
{{- end }}
{{- end }}

{{/*
Names of the environment variables the chart sets on the worker, operator and
helm test containers itself (their extraEnv must not repeat them: duplicate
names are rejected by server-side apply, or the last one silently wins).
*/}}
{{- define "resonate-patterns.worker.envNames" -}}
RESONATE_URL RESONATE_GROUP RESONATE_TOKEN RESONATE_PATTERNS_FACTORIAL_TARGET RESONATE_PATTERNS_ENRICH_TARGET RESONATE_PATTERNS_TASK_TTL_SECONDS RESONATE_PATTERNS_MAX_CONCURRENT_TASKS RESONATE_PATTERNS_DRAIN_SECONDS RESONATE_PATTERNS_HTTP_PORT RESONATE_PATTERNS_LOG_LEVEL RESONATE_PATTERNS_LOG_FORMAT
{{- end }}
{{- define "resonate-patterns.operator.envNames" -}}
RESONATE_PATTERNS_WATCH_NAMESPACE RESONATE_PATTERNS_OPERATOR_PEERING RESONATE_PATTERNS_OPERATOR_SELECTOR RESONATE_TOKEN RESONATE_PATTERNS_HTTP_PORT RESONATE_PATTERNS_LOG_LEVEL RESONATE_PATTERNS_LOG_FORMAT
{{- end }}
{{- define "resonate-patterns.tests.envNames" -}}
RESONATE_URL RESONATE_GROUP RESONATE_TOKEN RESONATE_PATTERNS_LOG_FORMAT
{{- end }}

{{/*
Fail when an extraEnv list names a variable the chart sets itself, or one
name twice. Call with (dict "where" "<values path>" "env" <list> "reserved"
<list of names> "also" <list of names set by another value> "alsoWhere"
"<that value>").
*/}}
{{- define "resonate-patterns.checkExtraEnv" -}}
{{- $seen := dict }}
{{- range (default list .env) }}
{{- if has .name $.reserved }}
{{- fail (printf "%s sets %s, which the chart sets itself; use the chart's value for it (see values.yaml)" $.where .name) }}
{{- end }}
{{- if has .name (default list $.also) }}
{{- fail (printf "%s sets %s, which %s sets too; set it in one place" $.where .name $.alsoWhere) }}
{{- end }}
{{- if hasKey $seen .name }}
{{- fail (printf "%s sets %s twice" $.where .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- end }}
{{- end }}

{{/*
Checks of the extension points (rendered by templates/validate.yaml): no
extraEnv repeats a variable the chart sets on that container.
*/}}
{{- define "resonate-patterns.validateExtensions" -}}
{{- $root := . }}
{{- range $i, $entry := .Values.workerGroups }}
{{- $g := include "resonate-patterns.workerGroup" (dict "root" $root "group" $entry) | fromYaml }}
{{- include "resonate-patterns.checkExtraEnv" (dict "where" (printf "workerGroups[%d] (%s): extraEnv" $i $g.name) "env" $g.extraEnv "reserved" (splitList " " (include "resonate-patterns.worker.envNames" $root)) "also" (keys (default dict $g.extraSettings)) "alsoWhere" "extraSettings") }}
{{- end }}
{{- if .Values.operator.enabled }}
{{- include "resonate-patterns.checkExtraEnv" (dict "where" "operator.extraEnv" "env" .Values.operator.extraEnv "reserved" (splitList " " (include "resonate-patterns.operator.envNames" .))) }}
{{- end }}
{{- if .Values.server.enabled }}
{{- include "resonate-patterns.checkExtraEnv" (dict "where" "server.extraEnv" "env" .Values.server.extraEnv "reserved" (splitList " " (include "resonate-patterns.server.envNames" .))) }}
{{- end }}
{{- if .Values.tests.enabled }}
{{- include "resonate-patterns.checkExtraEnv" (dict "where" "tests.extraEnv" "env" .Values.tests.extraEnv "reserved" (splitList " " (include "resonate-patterns.tests.envNames" .))) }}
{{- end }}
{{- end }}

{{/*
Service (ServiceMonitor targetLabels) or pod (PodMonitor podTargetLabels)
labels every scrape target of the chart carries into Prometheus, as
app_kubernetes_io_instance and app_kubernetes_io_component. One YAML list item
a line.
*/}}
{{- define "resonate-patterns.monitoring.targetLabels" -}}
- app.kubernetes.io/instance
- app.kubernetes.io/component
{{- end }}

{{/*
The PromQL matchers that scope a rule to this release: its namespace and its
instance label (a target label of the chart's scrape objects). Replaces the
__scope__="" marker of rules/alerts.yaml.
*/}}
{{- define "resonate-patterns.monitoring.ruleScope" -}}
{{- printf "namespace=%q,app_kubernetes_io_instance=%q" .Release.Namespace .Release.Name }}
{{- end }}

{{/*
"true" when the backlog API runs: some group scales with KEDA, or
backlogApi.enabled forces it (e.g. for dashboards). Empty otherwise.
*/}}
{{- define "resonate-patterns.backlogApi.enabled" -}}
{{- $on := .Values.backlogApi.enabled -}}
{{- range $entry := .Values.workerGroups }}
{{- $g := include "resonate-patterns.workerGroup" (dict "root" $ "group" $entry) | fromYaml }}
{{- if and $g.autoscaling.enabled (eq $g.autoscaling.engine "keda") }}{{ $on = true }}{{ end }}
{{- end }}
{{- if $on }}true{{ end }}
{{- end }}

{{/*
Name of the backlog API's Deployment and Service.
*/}}
{{- define "resonate-patterns.backlogApi.fullname" -}}
{{- printf "%s-backlog-api" (include "resonate-patterns.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The URL KEDA's metrics-api trigger reads (in-cluster Service DNS, with the namespace,
since KEDA's operator runs in its own namespace).
*/}}
{{- define "resonate-patterns.backlogApi.url" -}}
{{- printf "http://%s.%s.svc:%s" (include "resonate-patterns.backlogApi.fullname" .) .Release.Namespace (include "resonate-patterns.httpPort" .) }}
{{- end }}

{{/*
Against the cluster (crds.check): a group scaled by KEDA needs KEDA's
ScaledObject CRD, and no Deployment may be scaled by two engines at once (a
WorkerAutoscaler or ScaledObject of another release or made by hand targeting
a Deployment this release gives to the other engine). Objects of this release
are fine: an engine switch replaces them in the same upgrade.
*/}}
{{- define "resonate-patterns.validateEngines" -}}
{{- if .Values.crds.check }}
{{- $root := . }}
{{- $kedaCrd := lookup "apiextensions.k8s.io/v1" "CustomResourceDefinition" "" "scaledobjects.keda.sh" }}
{{- $was := (lookup "resonate-patterns.io/v1alpha1" "WorkerAutoscaler" .Release.Namespace "").items | default list }}
{{- $sos := list }}
{{- if $kedaCrd }}
{{- $sos = (lookup "keda.sh/v1alpha1" "ScaledObject" .Release.Namespace "").items | default list }}
{{- end }}
{{- range $entry := .Values.workerGroups }}
{{- $g := include "resonate-patterns.workerGroup" (dict "root" $root "group" $entry) | fromYaml }}
{{- /* engine none: another scaler is expected to own the Deployment's count. */}}
{{- if and $g.autoscaling.enabled (ne $g.autoscaling.engine "none") }}
{{- $target := include "resonate-patterns.worker.fullname" (dict "root" $root "group" $g.name) }}
{{- $keda := eq $g.autoscaling.engine "keda" }}
{{- /* lookup finds nothing under `helm template`: check only against a live cluster. */}}
{{- if and $keda (not $kedaCrd) (lookup "v1" "Namespace" "" "default") }}
{{- fail (printf "group %s uses autoscaling.engine keda, but KEDA is not installed (no scaledobjects.keda.sh CRD); install KEDA first, or set crds.check=false to skip this check" $g.name) }}
{{- end }}
{{- range $other := ternary $was $sos $keda }}
{{- $owner := index (default dict $other.metadata.annotations) "meta.helm.sh/release-name" }}
{{- if and (eq (toString $other.spec.scaleTargetRef.name) $target) (ne (toString $owner) $root.Release.Name) }}
{{- fail (printf "Deployment %s would be scaled twice: group %s uses autoscaling.engine %s, but %s %s already scales it; delete that object or change the group's engine" $target $g.name $g.autoscaling.engine $other.kind $other.metadata.name) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Names of the environment variables the chart sets on the backlog API container
itself (backlogApi.extraEnv must not repeat them, as for the operator).
*/}}
{{- define "resonate-patterns.backlogApi.envNames" -}}
RESONATE_URL RESONATE_TOKEN RESONATE_PATTERNS_BACKLOG_SCAN_SECONDS RESONATE_PATTERNS_HTTP_PORT RESONATE_PATTERNS_LOG_LEVEL RESONATE_PATTERNS_LOG_FORMAT
{{- end }}
