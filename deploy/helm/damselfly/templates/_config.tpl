{{/*
The configuration files, with Dragonfly's keys. Scalars go through toJson: JSON is YAML, so
every value arrives quoted and escaped exactly as given, and a regex keeps its backslashes.
*/}}

{{/* scheduler.yaml */}}
{{- define "damselfly.schedulerConfig" -}}
{{- $c := .Values.scheduler.config -}}
{{- $s := $c.scheduler -}}
{{- $seed := $c.seedPeer.enable -}}
{{- if kindIs "invalid" $seed -}}
{{- $seed = .Values.seedPeer.enable -}}
{{- end -}}
{{- $tls := include "damselfly.tlsOn" .Values.scheduler.tls -}}
server:
  listenIP: 0.0.0.0
  port: {{ $c.server.port | int }}
  {{- if $tls }}
  # mTLS: daemons must present a certificate of the cluster CA.
  tls:
    {{- include "damselfly.tlsTriple" (dict "root" .) | nindent 4 }}
  {{- end }}
scheduler:
  algorithm: {{ $s.algorithm | toJson }}
  backToSourceCount: {{ $s.backToSourceCount | int }}
  retryBackToSourceLimit: {{ $s.retryBackToSourceLimit | int }}
  retryLimit: {{ $s.retryLimit | int }}
  retryInterval: {{ $s.retryInterval | toJson }}
  candidateParentLimit: {{ $s.candidateParentLimit | int }}
  filterParentLimit: {{ $s.filterParentLimit | int }}
  parentGraph: {{ $s.parentGraph | toJson }}
  meshParentLimit: {{ $s.meshParentLimit | int }}
  gc:
    peerGCInterval: {{ $s.gc.peerGCInterval | toJson }}
    peerTTL: {{ $s.gc.peerTTL | toJson }}
    taskGCInterval: {{ $s.gc.taskGCInterval | toJson }}
    hostGCInterval: {{ $s.gc.hostGCInterval | toJson }}
    hostTTL: {{ $s.gc.hostTTL | toJson }}
seedPeer:
  enable: {{ $seed | toJson }}
  {{- if $tls }}
  # The same certificate as a client: seed peers take DownloadTask only from role scheduler.
  tls:
    {{- include "damselfly.tlsTriple" (dict "root" .) | nindent 4 }}
  {{- end }}
# Always on: the probes use /healthy on this port. metrics.enable in the chart's values
# only adds a Service (and ServiceMonitor) in front of it.
metrics:
  enable: true
  addr: {{ printf ":%d" ($c.metrics.port | int) | toJson }}
{{- end -}}

{{/*
dynconfig.yaml: where the peers find schedulers. dfdaemon reads it again (and resolves the
name again) every dynconfig.refreshInterval, and a ConfigMap mounted as a directory is
updated in place, so a change here reaches running daemons without a restart.
*/}}
{{- define "damselfly.dynconfig" -}}
scheduler:
{{- if .Values.scheduler.enable }}
  addr: {{ include "damselfly.schedulerAddr" . | toJson }}
{{- else if .Values.externalScheduler.addrs }}
  addrs:
  {{- range .Values.externalScheduler.addrs }}
    - {{ . | toJson }}
  {{- end }}
{{- else }}
  addr: {{ .Values.externalScheduler.addr | toJson }}
{{- end }}
{{- end -}}

{{/*
dfdaemon.yaml of node daemons and seed peers;
(dict "root" $ "values" .Values.dfdaemon|seedPeer "seed" BOOL "cacheSize" SIZE).
--ip and --hostname come from the pod (flags), the scheduler from dynconfig.yaml.
*/}}
{{- define "damselfly.peerConfig" -}}
{{- $root := .root -}}
{{- $c := .values.config -}}
{{- $proxy := $c.proxy -}}
{{- $tls := include "damselfly.tlsOn" .values.tls -}}
{{- $triple := include "damselfly.tlsTriple" (dict "root" $root) -}}
{{- if or $c.host.idc $c.host.location }}
host:
  {{- with $c.host.idc }}
  idc: {{ . | toJson }}
  {{- end }}
  {{- with $c.host.location }}
  location: {{ . | toJson }}
  {{- end }}
{{- end }}
upload:
  server:
    port: {{ $c.upload.server.port | int }}
    {{- if $tls }}
    {{- $triple | nindent 4 }}
    {{- end }}
  {{- if $tls }}
  # mTLS towards parents (SyncPieces); with both upload triples, QUIC is verified too.
  client:
    {{- $triple | nindent 4 }}
  {{- end }}
  bandwidthLimit: {{ $c.upload.bandwidthLimit | toString | toJson }}
download:
  server:
    socketPath: {{ printf "%s/dfdaemon.sock" (include "damselfly.socketDir" $root) | toJson }}
  bandwidthLimit: {{ $c.download.bandwidthLimit | toString | toJson }}
  backToSourceBandwidthLimit: {{ $c.download.backToSourceBandwidthLimit | toString | toJson }}
  concurrentPieceCount: {{ $c.download.concurrentPieceCount | int }}
  pieceTimeout: {{ $c.download.pieceTimeout | toJson }}
  protocol: {{ $c.download.protocol | toJson }}
  cutThrough: {{ $c.download.cutThrough | toJson }}
  quic:
    allowUnverifiedPeers: {{ $c.download.quic.allowUnverifiedPeers | toJson }}
scheduler:
  announceInterval: {{ $c.scheduler.announceInterval | toJson }}
  scheduleTimeout: {{ $c.scheduler.scheduleTimeout | toJson }}
  maxScheduleCount: {{ $c.scheduler.maxScheduleCount | int }}
  {{- if $tls }}
  {{- $triple | nindent 2 }}
  {{- end }}
dynconfig:
  refreshInterval: {{ $c.dynconfig.refreshInterval | toJson }}
{{- if .seed }}
seedPeer:
  enable: true
  type: {{ $c.seedPeer.type | toJson }}
  ration:
    enable: {{ $c.seedPeer.ration.enable | toJson }}
    piecesInFlight: {{ $c.seedPeer.ration.piecesInFlight | int }}
{{- end }}
storage:
  dir: {{ include "damselfly.storageDir" $root | toJson }}
  keep: {{ $c.storage.keep | toJson }}
  server:
    tcpPort: {{ $c.storage.server.tcpPort | int }}
    quicPort: {{ $c.storage.server.quicPort | int }}
gc:
  interval: {{ $c.gc.interval | toJson }}
  policy:
    taskTTL: {{ $c.gc.policy.taskTTL | toJson }}
    # The cache size.
    diskThreshold: {{ .cacheSize | toString | toJson }}
    diskHighThresholdPercent: {{ $c.gc.policy.diskHighThresholdPercent | int }}
    diskLowThresholdPercent: {{ $c.gc.policy.diskLowThresholdPercent | int }}
metrics:
  server:
    port: {{ $c.metrics.server.port | int }}
health:
  server:
    port: {{ $c.health.server.port | int }}
proxy:
  server:
    port: {{ $proxy.server.port | int }}
    requestRateLimit: {{ $proxy.server.requestRateLimit | int64 }}
    {{- with $proxy.server.basicAuth }}
    {{- if .username }}
    basicAuth:
      username: {{ .username | toJson }}
      password: {{ .password | toJson }}
    {{- end }}
    {{- end }}
    {{- with $proxy.server.caCert }}
    caCert: {{ . | toJson }}
    {{- end }}
    {{- with $proxy.server.caKey }}
    caKey: {{ . | toJson }}
    {{- end }}
  rules:
    {{- toYaml $proxy.rules | nindent 4 }}
  registryMirror:
    addr: {{ (first $root.Values.registries).server | trimSuffix "/" | toJson }}
    registries:
      {{- range $root.Values.registries }}
      {{- $server := urlParse .server }}
      - regx: {{ printf "^%s$" (regexQuoteMeta .host) | toJson }}
        schema: {{ $server.scheme | toJson }}
        host: {{ $server.host | toJson }}
      {{- end }}
  {{- with $proxy.hijackHTTPS.hosts }}
  hijackHTTPS:
    hosts:
      {{- toYaml . | nindent 6 }}
  {{- end }}
{{- end -}}

{{/* The proxy address dfinit points the runtime at: the daemon's proxy on the node. */}}
{{- define "damselfly.proxyAddr" -}}
{{- printf "http://127.0.0.1:%d" (.Values.dfdaemon.config.proxy.server.port | int) -}}
{{- end -}}

{{/* dfinit.yaml: one containerRuntime section, picked by dfdaemon.dfinit.containerRuntime. */}}
{{- define "damselfly.dfinitConfig" -}}
{{- $dfinit := .Values.dfdaemon.dfinit -}}
{{- $runtime := include "damselfly.runtime" . -}}
{{- $rt := get $dfinit $runtime -}}
proxy:
  addr: {{ include "damselfly.proxyAddr" . | toJson }}
containerRuntime:
  {{ $runtime }}:
    configPath: {{ $rt.configPath | toJson }}
{{- if eq $runtime "containerd" }}
    registries:
      {{- range .Values.registries }}
      - hostNamespace: {{ .host | toJson }}
        serverAddr: {{ .server | trimSuffix "/" | toJson }}
        capabilities: {{ .capabilities | default (list "pull" "resolve") | toJson }}
        {{- if hasKey . "skipVerify" }}
        skipVerify: {{ .skipVerify | toJson }}
        {{- end }}
      {{- end }}
    proxyAllRegistries: {{ $rt.proxyAllRegistries | toJson }}
{{- else if or (eq $runtime "crio") (eq $runtime "podman") }}
    unqualifiedSearchRegistries: {{ $rt.unqualifiedSearchRegistries | default list | toJson }}
    registries:
      {{- range .Values.registries }}
      - prefix: {{ .host | toJson }}
        location: {{ .host | toJson }}
      {{- end }}
{{- end }}
{{- end -}}

{{/*
The directory on the node dfinit may write: the directory of the runtime's configPath
(containerd: /etc/containerd; crio and podman: /etc/containers; docker: /etc/docker).
*/}}
{{- define "damselfly.runtimeConfigDir" -}}
{{- $rt := get .Values.dfdaemon.dfinit (include "damselfly.runtime" .) -}}
{{- dir $rt.configPath -}}
{{- end -}}

{{/* Checksums that roll pods when the files they read at start change. */}}
{{- define "damselfly.schedulerChecksum" -}}
{{- include "damselfly.schedulerConfig" . | sha256sum -}}
{{- end -}}

{{- define "damselfly.seedPeerCacheSize" -}}
{{- .Values.seedPeer.persistence.size | toString -}}
{{- end -}}

{{- define "damselfly.seedPeerConfig" -}}
{{- include "damselfly.peerConfig" (dict "root" . "values" .Values.seedPeer "seed" true "cacheSize" (include "damselfly.seedPeerCacheSize" .)) -}}
{{- end -}}

{{- define "damselfly.dfdaemonConfig" -}}
{{- include "damselfly.peerConfig" (dict "root" . "values" .Values.dfdaemon "seed" false "cacheSize" (.Values.dfdaemon.cache.size | toString)) -}}
{{- end -}}

{{/*
dynconfig.yaml is left out on purpose: dfdaemon re-reads it in place. dfinit.yaml is in:
dfinit only runs when a pod starts.
*/}}
{{- define "damselfly.dfdaemonChecksum" -}}
{{- $files := include "damselfly.dfdaemonConfig" . -}}
{{- if .Values.dfdaemon.dfinit.enable -}}
{{- $files = printf "%s\n---\n%s" $files (include "damselfly.dfinitConfig" .) -}}
{{- end -}}
{{- $files | sha256sum -}}
{{- end -}}

{{- define "damselfly.seedPeerChecksum" -}}
{{- include "damselfly.seedPeerConfig" . | sha256sum -}}
{{- end -}}
