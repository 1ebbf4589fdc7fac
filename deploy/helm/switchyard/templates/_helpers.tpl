{{/* Names and labels. */}}
{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.fullname" -}}
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

{{- define "switchyard.headless" -}}
{{- printf "%s-headless" (include "switchyard.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: broker
{{- end -}}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Secrets: the chart's own, or the operator's. */}}
{{- define "switchyard.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "switchyard.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{- define "switchyard.usersSecretName" -}}
{{- default (printf "%s-users" (include "switchyard.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "switchyard.usersSecretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}users.toml{{- end -}}
{{- end -}}

{{/* Whether switchyard.toml configures TLS listeners / users (see values.yaml `features`). */}}
{{- define "switchyard.tlsRendered" -}}
{{- if and .Values.tls.enabled .Values.features.tls -}}true{{- end -}}
{{- end -}}

{{- define "switchyard.authRendered" -}}
{{- if and .Values.auth.enabled .Values.features.auth -}}true{{- end -}}
{{- end -}}

{{/*
Every port the pod serves: a list of {name, port, nodePort} (name is the
listener name, shortened to a valid port name).
*/}}
{{- define "switchyard.ports" -}}
{{- $ports := list -}}
{{- range $name := list "mqtt" "amqp" "stomp" "nats" "http" -}}
{{- $l := index $.Values.listeners $name -}}
{{- if $l.enabled -}}
{{- $ports = append $ports (dict "name" $name "port" $l.port "nodePort" $l.nodePort) -}}
{{- end -}}
{{- end -}}
{{- if include "switchyard.tlsRendered" . -}}
{{- range $name, $l := .Values.tls.listeners -}}
{{- $plain := index $.Values.listeners $l.protocol -}}
{{- if and $l.enabled $plain.enabled -}}
{{- $ports = append $ports (dict "name" ($name | trunc 15 | trimSuffix "-") "port" $l.port "nodePort" $l.nodePort) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $ports -}}
{{- end -}}

{{/*
TOML rendering. A value: strings JSON-quoted (a valid TOML basic string),
integral numbers as integers (YAML numbers arrive as float64), lists as
arrays, maps as inline tables.
*/}}
{{- define "switchyard.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "switchyard.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (floor $v) (float64 $v) -}}{{ int64 $v }}{{- else -}}{{ $v }}{{- end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) -}}{{ $v }}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "switchyard.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "switchyard.toml.key" $k }} = {{ include "switchyard.toml.value" (index $v $k) }}{{ end }} }
{{- else -}}{{ fail (printf "switchyard.toml: cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end -}}
{{- end -}}

{{/* The key = value lines of a map (null values are left out: the broker's default). */}}
{{- define "switchyard.toml.pairs" -}}
{{- range $k := keys . | sortAlpha }}
{{- $v := index $ $k }}
{{- if not (kindIs "invalid" $v) }}
{{ include "switchyard.toml.key" $k }} = {{ include "switchyard.toml.value" $v }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A duration string ("10s", "250ms", "2m", "1h", plain milliseconds) in whole seconds, rounded up; "" when not understood. */}}
{{- define "switchyard.seconds" -}}
{{- $s := toString . | trim -}}
{{- if regexMatch "^[0-9]+$" $s -}}{{ div (add (atoi $s) 999) 1000 }}
{{- else if regexMatch "^[0-9]+ ?ms$" $s -}}{{ div (add (atoi (regexFind "^[0-9]+" $s)) 999) 1000 }}
{{- else if regexMatch "^[0-9]+ ?s$" $s -}}{{ atoi (regexFind "^[0-9]+" $s) }}
{{- else if regexMatch "^[0-9]+ ?m$" $s -}}{{ mul (atoi (regexFind "^[0-9]+" $s)) 60 }}
{{- else if regexMatch "^[0-9]+ ?h$" $s -}}{{ mul (atoi (regexFind "^[0-9]+" $s)) 3600 }}
{{- end -}}
{{- end -}}

{{/*
[limits] memory_high_watermark from the container's memory limit: the
broker's own default (40% of the machine's memory, read from /proc/meminfo)
does not see a cgroup limit, so in a pod flow control would start only
after the OOM killer. "" when there is no limit or the percentage is 0.
*/}}
{{- define "switchyard.memoryWatermark" -}}
{{- $pct := int (default 0 .Values.config.memoryHighWatermarkPercent) -}}
{{- $limit := "" -}}
{{- with .Values.resources -}}{{- with .limits -}}{{- with .memory -}}{{- $limit = toString . -}}{{- end -}}{{- end -}}{{- end -}}
{{- if and (gt $pct 0) $limit -}}
{{- if not (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$" $limit) -}}
{{- fail (printf "resources.limits.memory %q: use an integer with Ki, Mi, Gi, Ti, k, M, G or T (or set config.memoryHighWatermarkPercent: 0)" $limit) -}}
{{- end -}}
{{- $n := atoi (regexFind "^[0-9]+" $limit) -}}
{{- $unit := trimPrefix (toString $n) $limit -}}
{{- $mult := get (dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776) $unit -}}
{{- printf "%d" (div (mul $n $mult $pct) 100) -}}
{{- end -}}
{{- end -}}

{{/* Checks that fail the render with a clear message. */}}
{{- define "switchyard.validate" -}}
{{- if not .Values.listeners.http.enabled -}}
{{- fail "listeners.http.enabled must be true: the probes use /healthz and /readyz on the HTTP listener" -}}
{{- end -}}
{{- $drain := include "switchyard.seconds" .Values.config.server.drainPeriod -}}
{{- $grace := include "switchyard.seconds" .Values.config.server.shutdownGrace -}}
{{- if and $drain $grace -}}
{{- $need := add (atoi $drain) (atoi $grace) 15 -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $need) -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least drainPeriod + shutdownGrace + 15s for the journal flush (%d)" .Values.terminationGracePeriodSeconds $need) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (or (not .Values.tls.cert) (not .Values.tls.key)) -}}
{{- fail "tls.enabled needs tls.existingSecret or both tls.cert and tls.key" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.tls.clientAuth (not .Values.tls.existingSecret) (not .Values.tls.ca) -}}
{{- fail "tls.clientAuth needs the client CA: tls.ca or ca.crt in tls.existingSecret" -}}
{{- end -}}
{{- end -}}

{{/* switchyard.toml */}}
{{- define "switchyard.config" -}}
{{- $v := .Values -}}
# Rendered by the switchyard Helm chart from its values; see
# config/switchyard.toml of the broker for every key.

[server]
name = {{ toJson $v.config.server.name }}
data_dir = {{ toJson $v.dataDir }}
shutdown_grace = {{ toJson $v.config.server.shutdownGrace }}
drain_period = {{ toJson $v.config.server.drainPeriod }}

[log]
format = {{ toJson $v.config.log.format }}
level = {{ toJson $v.config.log.level }}

[journal]
enabled = {{ $v.config.journal.enabled }}
fsync = {{ toJson $v.config.journal.fsync }}
segment_size = {{ toJson $v.config.journal.segmentSize }}
max_batch_delay = {{ toJson $v.config.journal.maxBatchDelay }}
{{- $limits := deepCopy (default dict $v.config.limits) }}
{{- $watermark := include "switchyard.memoryWatermark" . }}
{{- if and $watermark (not (hasKey $limits "memory_high_watermark")) }}
{{- $_ := set $limits "memory_high_watermark" $watermark }}
{{- end }}
{{- if $limits }}

[limits]
{{- include "switchyard.toml.pairs" $limits }}
{{- end }}
{{- range $name := list "mqtt" "amqp" "stomp" "nats" "http" }}
{{- $l := index $v.listeners $name }}

[listeners.{{ $name }}]
enabled = {{ $l.enabled }}
bind = {{ printf "%s:%v" $v.bindAddress $l.port | toJson }}
{{- with $l.options }}
{{- include "switchyard.toml.pairs" . }}
{{- end }}
{{- if and (include "switchyard.tlsRendered" $) (eq $name "nats") }}
{{ include "switchyard.tlsTable" (dict "name" $name "root" $) }}
{{- end }}
{{- end }}
{{- if include "switchyard.tlsRendered" . }}
{{- range $name, $l := $v.tls.listeners }}
{{- $plain := index $v.listeners $l.protocol }}

[listeners.{{ $name }}]
protocol = {{ toJson $l.protocol }}
enabled = {{ and $l.enabled $plain.enabled }}
bind = {{ printf "%s:%v" $v.bindAddress $l.port | toJson }}
{{- with $plain.options }}
{{- include "switchyard.toml.pairs" . }}
{{- end }}
{{ include "switchyard.tlsTable" (dict "name" $name "root" $) }}
{{- end }}
{{- end }}
{{- range $pattern, $policy := $v.config.addresses }}

[addresses.{{ toJson $pattern }}]
{{- include "switchyard.toml.pairs" $policy }}
{{- end }}
{{- if include "switchyard.authRendered" . }}
{{- range $v.auth.acl }}

[[acl]]
{{- include "switchyard.toml.pairs" . }}
{{- end }}
{{- end }}
{{- with $v.config.extra }}

{{ . }}
{{- end }}
{{- end -}}

{{/*
The [listeners.NAME.tls] table: PEM paths inside the mounted TLS Secret.
The key names follow the broker's TLS configuration (issue 10); they are
only written when features.tls is true.
*/}}
{{- define "switchyard.tlsTable" -}}
{{- $v := .root.Values -}}
[listeners.{{ .name }}.tls]
cert = {{ printf "%s/tls.crt" $v.tls.mountPath | toJson }}
key = {{ printf "%s/tls.key" $v.tls.mountPath | toJson }}
{{- if $v.tls.clientAuth }}
client_ca = {{ printf "%s/ca.crt" $v.tls.mountPath | toJson }}
client_auth = {{ ternary "optional" "required" (eq (toString $v.tls.clientAuth) "optional") | toJson }}
{{- end }}
{{- with $v.tls.options }}
{{- include "switchyard.toml.pairs" . }}
{{- end }}
{{- end -}}

{{/* users.toml: the [[users]] tables (in a Secret). */}}
{{- define "switchyard.users" -}}
# [[users]] for switchyard.toml, rendered by the switchyard Helm chart.
{{- range .Values.auth.users }}

[[users]]
{{- include "switchyard.toml.pairs" . }}
{{- end }}
{{- end -}}
