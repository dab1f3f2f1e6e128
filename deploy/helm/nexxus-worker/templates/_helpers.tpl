{{/*
Names, labels and the pod template shared by every workload of the chart.
*/}}

{{/* The roles in a fixed order; `stateful` roles need a stable index (see values.yaml). */}}
{{- define "nexxus.roles" -}}
aggregation write transport_manager track ios_transport android_transport sockets_transport
{{- end -}}

{{- define "nexxus.statefulRoles" -}}
aggregation sockets_transport
{{- end -}}

{{- define "nexxus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nexxus.fullname" -}}
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

{{- define "nexxus.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A role name as it may appear in resource names: transport_manager -> transport-manager. */}}
{{- define "nexxus.roleSlug" -}}
{{- . | replace "_" "-" -}}
{{- end -}}

{{/* <fullname>-<role-slug>, at most 63 characters. Call with (dict "root" $ "role" $role). */}}
{{- define "nexxus.roleFullname" -}}
{{- $suffix := include "nexxus.roleSlug" .role -}}
{{- printf "%s-%s" (include "nexxus.fullname" .root | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" -}}
{{- end -}}

{{- define "nexxus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nexxus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nexxus.labels" -}}
helm.sh/chart: {{ include "nexxus.chart" . }}
{{ include "nexxus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nexxus
{{- end -}}

{{/* Selector of one role's pods. Call with (dict "root" $ "role" $role). */}}
{{- define "nexxus.roleSelectorLabels" -}}
{{ include "nexxus.selectorLabels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "nexxus.roleLabels" -}}
{{ include "nexxus.labels" .root }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{/* Label on every worker pod (not on the topics job): what the metrics Service selects. */}}
{{- define "nexxus.workerLabel" -}}
nexxus-worker/scrape: "true"
{{- end -}}

{{- define "nexxus.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "nexxus.secretName" -}}
{{- .Values.secret.existingSecret | default (include "nexxus.fullname" .) -}}
{{- end -}}

{{- define "nexxus.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "nexxus.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Seconds between SIGTERM and SIGKILL for a role. Call with (dict "root" $ "role" $role). */}}
{{- define "nexxus.terminationGrace" -}}
{{- $v := .root.Values -}}
{{- if ne (toString $v.terminationGracePeriodSeconds) "" -}}
{{- $v.terminationGracePeriodSeconds | int -}}
{{- else -}}
{{- $ms := $v.config.TP_SHUTDOWN_GRACE_MS | default "10000" | int -}}
{{- $s := add (div (add $ms 999) 1000) ($v.terminationGraceExtraSeconds | int) -}}
{{- if eq .role "sockets_transport" -}}
{{- $s = add $s ((index $v.roles "sockets_transport").preStopDelaySeconds | int) -}}
{{- end -}}
{{- $s -}}
{{- end -}}
{{- end -}}

{{/*
The shell line that starts a role: the index comes from the pod name. StatefulSet pods end in
their ordinal (<name>-<ordinal>); Deployment pods get the CRC32 (cksum) of their unique name,
which only names the worker. Exec, so nexxus-worker is PID 1 and receives SIGTERM itself.
Call with (dict "root" $ "role" $role).
*/}}
{{- define "nexxus.startScript" -}}
{{- if has .role (splitList " " (include "nexxus.statefulRoles" .root)) -}}
i="${POD_NAME##*-}"
{{- else -}}
i="$(printf '%s' "$POD_NAME" | cksum | cut -d ' ' -f 1)"
{{- end }}
case "$i" in ''|*[!0-9]*) echo "cannot derive a worker index from pod name '$POD_NAME'" >&2; exit 64;; esac
exec nexxus-worker -t {{ .role }} -i "$i"
{{- end -}}

{{/*
Pod template of one role. Call with (dict "root" $ "role" $role).
*/}}
{{- define "nexxus.podTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $role := .role -}}
{{- $r := index $v.roles $role -}}
{{- $sockets := eq $role "sockets_transport" -}}
metadata:
  labels:
    {{- include "nexxus.roleLabels" . | nindent 4 }}
    {{- include "nexxus.workerLabel" $root | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- if not $v.secret.existingSecret }}
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
    {{- end }}
    {{- if $v.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $v.http.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $r.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "nexxus.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ include "nexxus.terminationGrace" . }}
  containers:
    - name: {{ include "nexxus.roleSlug" $role }}
      image: {{ include "nexxus.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      command: ["/bin/sh", "-c"]
      args:
        - |
          {{- include "nexxus.startScript" . | nindent 10 }}
      envFrom:
        - configMapRef:
            name: {{ include "nexxus.fullname" $root }}
        - secretRef:
            name: {{ include "nexxus.secretName" $root }}
      env:
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- if $sockets }}
        - name: TP_SCKT_PORT
          value: {{ $r.containerPort | quote }}
        {{- if $r.tls.enabled }}
        - name: TP_SCKT_SSL
          value: "true"
        - name: TP_SCKT_KEY_SSL
          value: /etc/nexxus/tls/{{ $r.tls.keyKey }}
        - name: TP_SCKT_CERT_FILE
          value: /etc/nexxus/tls/{{ $r.tls.certKey }}
        {{- if $r.tls.caKey }}
        - name: TP_SCKT_CA_CERT
          value: /etc/nexxus/tls/{{ $r.tls.caKey }}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- if or $v.redisCa.secretName $v.redisCa.configMapName }}
        - name: TP_REDIS_CA_FILE
          value: /etc/nexxus/redis-ca/{{ $v.redisCa.key }}
        {{- end }}
        {{- range $name, $value := $r.env }}
        - name: {{ $name }}
          value: {{ $value | toString | quote }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ $v.http.port }}
          protocol: TCP
        {{- if $sockets }}
        - name: ws
          containerPort: {{ $r.containerPort }}
          protocol: TCP
        {{- end }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        {{- toYaml $v.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        {{- toYaml $v.probes.readiness | nindent 8 }}
      {{- if and $sockets (gt ($r.preStopDelaySeconds | int) 0) }}
      lifecycle:
        preStop:
          exec:
            command: ["sleep", {{ $r.preStopDelaySeconds | int | toString | quote }}]
      {{- end }}
      resources:
        {{- toYaml $r.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if and $sockets $r.tls.enabled }}
        - name: tls
          mountPath: /etc/nexxus/tls
          readOnly: true
        {{- end }}
        {{- if or $v.redisCa.secretName $v.redisCa.configMapName }}
        - name: redis-ca
          mountPath: /etc/nexxus/redis-ca
          readOnly: true
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
    {{- if and $sockets $r.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ $r.tls.secretName }}
        defaultMode: 0440
    {{- end }}
    {{- if $v.redisCa.secretName }}
    - name: redis-ca
      secret:
        secretName: {{ $v.redisCa.secretName }}
        defaultMode: 0440
    {{- else if $v.redisCa.configMapName }}
    - name: redis-ca
      configMap:
        name: {{ $v.redisCa.configMapName }}
    {{- end }}
  {{- with ($r.nodeSelector | default $v.nodeSelector) }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with ($r.tolerations | default $v.tolerations) }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $affinity := $r.affinity | default $v.affinity }}
  {{- if $affinity }}
  affinity:
    {{- toYaml $affinity | nindent 4 }}
  {{- else if eq $v.podAntiAffinity "soft" }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "nexxus.roleSelectorLabels" . | nindent 16 }}
  {{- else if eq $v.podAntiAffinity "hard" }}
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "nexxus.roleSelectorLabels" . | nindent 14 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    {{- $c := deepCopy . }}
    {{- if not (hasKey $c "labelSelector") }}
    {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "nexxus.roleSelectorLabels" (dict "root" $root "role" $role) | fromYaml)) }}
    {{- end }}
    {{- toYaml (list $c) | nindent 4 }}
    {{- end }}
  {{- end }}
{{- end -}}

{{/*
Checks of values that Kubernetes would accept but the workers would not.
*/}}
{{- define "nexxus.validate" -}}
{{- $v := .Values -}}
{{- $secretKeys := list "TP_JWT_SECRET" "TP_KAFKA_OPTS" "TP_SCKT_KEY_PASSPHRASE" "TP_INGRESS_TOKEN" "TP_ADMIN_TOKEN" -}}
{{- $derived := list "TP_HTTP_PORT" "TP_SCKT_PORT" "TP_SCKT_SSL" "TP_SCKT_KEY_SSL" "TP_SCKT_CERT_FILE" "TP_SCKT_CERT_SSL" "TP_SCKT_CA_CERT" "TP_REDIS_CA_FILE" -}}
{{- if and $v.redisCa.secretName $v.redisCa.configMapName -}}
{{- fail "redisCa: set secretName or configMapName, not both" -}}
{{- end -}}
{{- range $k, $_ := $v.config -}}
{{- if not (hasPrefix "TP_" $k) -}}
{{- fail (printf "config.%s: only TP_* variables belong in config" $k) -}}
{{- end -}}
{{- if has $k $secretKeys -}}
{{- fail (printf "config.%s is secret: set it in secret.values or in secret.existingSecret" $k) -}}
{{- end -}}
{{- if has $k $derived -}}
{{- fail (printf "config.%s is set by the chart (http.port, roles.sockets_transport.containerPort / .tls, redisCa)" $k) -}}
{{- end -}}
{{- end -}}
{{- range $k, $_ := $v.secret.values -}}
{{- if not (hasPrefix "TP_" $k) -}}
{{- fail (printf "secret.values.%s: only TP_* variables belong in the Secret" $k) -}}
{{- end -}}
{{- end -}}
{{- range $role, $r := $v.roles -}}
{{- range $k, $_ := ($r.env | default dict) -}}
{{- if or (has $k $secretKeys) (has $k $derived) (eq $k "TP_SHUTDOWN_GRACE_MS") (eq $k "POD_NAME") -}}
{{- fail (printf "roles.%s.env.%s: set it in %s" $role $k (ternary "secret" "config / the chart's own values" (has $k $secretKeys))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $port := $v.http.port | int -}}
{{- if or (lt $port 1) (gt $port 65535) -}}
{{- fail "http.port must be 1-65535 (0 would turn off the endpoint the probes use)" -}}
{{- end -}}
{{- if not (has $v.podAntiAffinity (list "soft" "hard" "none")) -}}
{{- fail "podAntiAffinity must be soft, hard or none" -}}
{{- end -}}
{{- range $role := splitList " " (include "nexxus.roles" .) -}}
{{- if not (hasKey $v.roles $role) -}}
{{- fail (printf "roles.%s is missing" $role) -}}
{{- end -}}
{{- end -}}
{{- range $role, $_ := $v.roles -}}
{{- if not (has $role (splitList " " (include "nexxus.roles" $))) -}}
{{- fail (printf "roles.%s: unknown role (known: %s)" $role (include "nexxus.roles" $)) -}}
{{- end -}}
{{- end -}}
{{- $s := index $v.roles "sockets_transport" -}}
{{- if $s.enabled -}}
{{- if gt ($s.replicaCount | int) ($v.topics.socketsIndexes | int) -}}
{{- fail (printf "roles.sockets_transport.replicaCount %d exceeds topics.socketsIndexes %d: pods without a sockets_transport-<index> topic never become ready (raise `indexes` in your topic files, see topics.configMap)" ($s.replicaCount | int) ($v.topics.socketsIndexes | int)) -}}
{{- end -}}
{{- if and $s.tls.enabled (not $s.tls.secretName) -}}
{{- fail "roles.sockets_transport.tls.enabled needs roles.sockets_transport.tls.secretName" -}}
{{- end -}}
{{- end -}}
{{- end -}}
