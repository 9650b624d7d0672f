{{/* Names, labels, images and the merged per-job values; nothing else lives here. */}}

{{- define "astrobio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "astrobio.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 30 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 30 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "astrobio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "astrobio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "astrobio.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "astrobio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: astrobio-train
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "astrobio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "astrobio.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image reference from {image, root}: repository@digest, else repository:tag (tag defaults to appVersion) */}}
{{- define "astrobio.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/* a job's values: jobDefaults with the job's own keys replacing them (falsy values kept), as YAML */}}
{{- define "astrobio.mergeEntry" -}}
{{- $merged := deepCopy .defaults -}}
{{- range $key, $value := .entry -}}
{{- $_ := set $merged $key $value -}}
{{- end -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* PyTorchJob name from {root, name, job}: fullname-name[-runId], a DNS-1035 label short enough for pod names */}}
{{- define "astrobio.jobName" -}}
{{- $base := printf "%s-%s" (include "astrobio.fullname" .root) .name -}}
{{- $full := ternary (printf "%s-%s" $base .job.runId) $base (ne (toString .job.runId) "") -}}
{{- if gt (len $full) 48 -}}
{{- fail (printf "job name %q is longer than 48 characters (pods are named <job>-worker-N): shorten the release, the job key or runId" $full) -}}
{{- end -}}
{{- $full -}}
{{- end -}}

{{/* pod securityContext for Pod Security "restricted" */}}
{{- define "astrobio.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "astrobio.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* storage environment shared by trainer and data jobs: dataset root and S3 settings from a Secret reference */}}
{{- define "astrobio.storageEnv" -}}
- name: ASTROBIO_DATA_ROOT
  value: {{ .Values.storage.dataRoot | quote }}
{{- with .Values.storage.s3 }}
{{- if .enabled }}
{{- with .endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- if .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- end }}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- end -}}

{{/* "true" when the data jobs mount the PVC: it is enabled and the storage root is its mount path or below it */}}
{{- define "astrobio.dataOnPvc" -}}
{{- with .Values.storage -}}
{{- $mount := trimSuffix "/" .pvc.mountPath -}}
{{- if and .pvc.enabled (or (eq (trimSuffix "/" .dataRoot) $mount) (hasPrefix (printf "%s/" $mount) .dataRoot)) -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "astrobio.pvcName" -}}
{{- default (printf "%s-data" (include "astrobio.fullname" .)) .Values.storage.pvc.existingClaim -}}
{{- end -}}

{{/* longest gap in seconds between two runs of a cron schedule (an upper bound for the common forms) */}}
{{- define "astrobio.cronPeriod" -}}
{{- $s := trim . -}}
{{- $macros := dict "@hourly" 3600 "@daily" 86400 "@midnight" 86400 "@weekly" 604800 "@monthly" 2678400 "@yearly" 31622400 "@annually" 31622400 -}}
{{- if hasKey $macros $s -}}
{{- get $macros $s -}}
{{- else -}}
{{- $f := splitList " " (regexReplaceAll "\\s+" $s " ") -}}
{{- if ne (len $f) 5 -}}
{{- fail (printf "schedule %q: expected 5 cron fields or a macro; set alertAfterSeconds to size its staleness alert" $s) -}}
{{- end -}}
{{- $minute := index $f 0 -}}{{- $hour := index $f 1 -}}
{{- if ne (index $f 3) "*" -}}
{{- 31622400 -}}
{{- else if ne (index $f 2) "*" -}}
{{- 2678400 -}}
{{- else if ne (index $f 4) "*" -}}
{{- 604800 -}}
{{- else if regexMatch "^\\*/[0-9]+$" $hour -}}
{{- mul 3600 (trimPrefix "*/" $hour | atoi) -}}
{{- else if ne $hour "*" -}}
{{- 86400 -}}
{{- else if regexMatch "^\\*/[0-9]+$" $minute -}}
{{- mul 60 (trimPrefix "*/" $minute | atoi) -}}
{{- else -}}
{{- 3600 -}}
{{- end -}}
{{- end -}}
{{- end -}}
