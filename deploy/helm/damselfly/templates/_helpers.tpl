{{/*
Names, labels and images shared by every template.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "damselfly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's base name: fullnameOverride, else the release name when it already contains
the chart name, else "<release>-damselfly". Kept to 40 characters so that the longest
derived name, "<fullname>-seed-peer-metrics", stays a valid 63-character DNS label and the
StatefulSet's pods get their controller-revision-hash label.
*/}}
{{- define "damselfly.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "damselfly.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<fullname>-<component>"; call with (dict "root" $ "component" "scheduler"). */}}
{{- define "damselfly.componentName" -}}
{{- printf "%s-%s" (include "damselfly.fullname" .root) .component -}}
{{- end -}}

{{/* Labels that select one component's pods; (dict "root" $ "component" NAME). */}}
{{- define "damselfly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "damselfly.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of one component's objects; (dict "root" $ "component" NAME). */}}
{{- define "damselfly.labels" -}}
helm.sh/chart: {{ include "damselfly.chart" .root }}
{{ include "damselfly.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: {{ include "damselfly.name" .root }}
{{- end -}}

{{/*
An image reference: (dict "root" $ "image" .Values.x.image). global.imageRegistry wins over
the image's registry; a digest wins over the tag; the tag defaults to the appVersion.
*/}}
{{- define "damselfly.image" -}}
{{- $registry := .root.Values.global.imageRegistry | default .image.registry -}}
{{- $repository := .image.repository -}}
{{- if $registry -}}
{{- $repository = printf "%s/%s" $registry .image.repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (.image.tag | default .root.Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets of a pod: the global ones plus the component's; (dict "root" $ "values" V). */}}
{{- define "damselfly.imagePullSecrets" -}}
{{- $secrets := concat (.root.Values.global.imagePullSecrets | default list) (.values.imagePullSecrets | default list) -}}
{{- if $secrets }}
imagePullSecrets:
  {{- range $secrets }}
  {{- if kindIs "string" . }}
  - name: {{ . | quote }}
  {{- else }}
  - name: {{ .name | quote }}
  {{- end }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* nodeSelector of a pod: the component's, else the global one. */}}
{{- define "damselfly.nodeSelector" -}}
{{- with (.values.nodeSelector | default .root.Values.global.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Scheduling fields common to every pod: priority, tolerations, node selector. */}}
{{- define "damselfly.podScheduling" -}}
{{- include "damselfly.nodeSelector" . }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
A soft anti-affinity that spreads a component's pods over nodes, used when the component
sets no affinity of its own; (dict "root" $ "component" NAME "required" BOOL).
*/}}
{{- define "damselfly.spreadAffinity" -}}
affinity:
  podAntiAffinity:
    {{- if .required }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "damselfly.selectorLabels" . | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "damselfly.selectorLabels" . | nindent 14 }}
    {{- end }}
{{- end -}}

{{/* Pod annotations: the config checksum first, then the component's own. */}}
{{- define "damselfly.podAnnotations" -}}
checksum/config: {{ .checksum }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* httpGet probe timing from a values block; (dict "probe" V "port" N). */}}
{{- define "damselfly.httpProbe" -}}
httpGet:
  path: /healthy
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}

{{/* Fixed paths inside the containers, Dragonfly's. */}}
{{- define "damselfly.configDir" -}}/etc/dragonfly{{- end -}}
{{- define "damselfly.storageDir" -}}/var/lib/dragonfly{{- end -}}
{{- define "damselfly.socketDir" -}}/var/run/dragonfly{{- end -}}

{{/*
The scheduler address the peers' dynconfig names: the headless Service of this release's
schedulers, which resolves to every ready scheduler pod.
*/}}
{{- define "damselfly.schedulerAddr" -}}
{{- printf "%s.%s.svc.%s:%d" (include "damselfly.componentName" (dict "root" . "component" "scheduler")) .Release.Namespace .Values.clusterDomain (int .Values.scheduler.config.server.port) -}}
{{- end -}}

{{/* The container runtime dfinit configures, and its values block. */}}
{{- define "damselfly.runtime" -}}
{{- .Values.dfdaemon.dfinit.containerRuntime -}}
{{- end -}}

{{/* "true" when the restart-container-runtime init container runs, else "". */}}
{{- define "damselfly.restartRuntime" -}}
{{- $dfinit := .Values.dfdaemon.dfinit -}}
{{- $runtime := include "damselfly.runtime" . -}}
{{- $enable := $dfinit.restartContainerRuntime.enable -}}
{{- if kindIs "invalid" $enable -}}
{{- $enable = has $runtime (list "crio" "docker") -}}
{{- end -}}
{{- if and $dfinit.enable $enable -}}true{{- end -}}
{{- end -}}

{{/* "true" when a size is zero ("0", "0Gi"): no quota, no size limit. */}}
{{- define "damselfly.isZeroSize" -}}
{{- if regexMatch "^0+(\\.0+)?[A-Za-z]*$" (toString .) -}}true{{- end -}}
{{- end -}}

{{/*
TLS of one component, from its `tls` values: "true" when a source is set, else "".
The files are Kubernetes TLS Secret names (cert-manager adds ca.crt), which are also what
`dfctl cert issue` writes, so a Secret and a node directory mount the same way.
*/}}
{{- define "damselfly.tlsDir" -}}/etc/damselfly/tls{{- end -}}
{{- define "damselfly.tlsOn" -}}
{{- if or (get . "secretName") (get . "hostPath") -}}true{{- end -}}
{{- end -}}

{{/* caCert/cert/key keys pointing at the mounted files; (dict "root" $). */}}
{{- define "damselfly.tlsTriple" -}}
{{- $dir := include "damselfly.tlsDir" .root -}}
caCert: {{ printf "%s/ca.crt" $dir | toJson }}
cert: {{ printf "%s/tls.crt" $dir | toJson }}
key: {{ printf "%s/tls.key" $dir | toJson }}
{{- end -}}

{{/* The volumeMount of the TLS files, when the component's tls values set a source. */}}
{{- define "damselfly.tlsVolumeMount" -}}
{{- if include "damselfly.tlsOn" .tls }}
- name: tls
  mountPath: {{ include "damselfly.tlsDir" .root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
The TLS volume; (dict "root" $ "tls" .Values.X.tls "mode" N). mode: the Secret files'
permission bits (decimal in the manifest): 0400 (256) for root daemons, 0440 (288) with an
fsGroup for the non-root scheduler. A hostPath must already exist (type Directory): an
empty directory created in its place would only fail later, with a less clear error.
*/}}
{{- define "damselfly.tlsVolume" -}}
{{- if .tls.secretName }}
- name: tls
  secret:
    secretName: {{ .tls.secretName | quote }}
    defaultMode: {{ .mode }}
{{- else if get .tls "hostPath" }}
- name: tls
  hostPath:
    path: {{ get .tls "hostPath" | quote }}
    type: Directory
{{- end }}
{{- end -}}
