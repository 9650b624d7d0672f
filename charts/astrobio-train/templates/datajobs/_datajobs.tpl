{{/* the enabled data jobs as YAML {name: merged values}, source defaulting to the entry's name */}}
{{- define "astrobio.enabledDataJobs" -}}
{{- $out := dict -}}
{{- range $name, $entry := .Values.dataJobs -}}
{{- $job := include "astrobio.mergeEntry" (dict "defaults" $.Values.dataJobDefaults "entry" $entry) | fromYaml -}}
{{- if $job.enabled -}}
{{- if and (eq $job.kind "CronJob") (not $job.schedule) -}}
{{- fail (printf "dataJobs.%s.schedule is required" $name) -}}
{{- end -}}
{{- if and (eq $job.kind "Job") $job.schedule -}}
{{- fail (printf "dataJobs.%s.schedule is set but kind is Job (a one-off run): use kind CronJob" $name) -}}
{{- end -}}
{{- $_ := set $job "source" (default $name $job.source) -}}
{{- $_ := set $out $name $job -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* a data job's Job spec (the CronJob's jobTemplate.spec, or a Job's spec): dict "root" $ "job" $job */}}
{{- define "astrobio.dataJobSpec" -}}
{{- if eq $.job.kind "Job" }}
completions: {{ $.job.completions }}
parallelism: {{ $.job.parallelism }}
completionMode: {{ $.job.completionMode }}
{{- end }}
backoffLimit: {{ $.job.backoffLimit }}
activeDeadlineSeconds: {{ $.job.activeDeadlineSeconds }}
ttlSecondsAfterFinished: {{ $.job.ttlSecondsAfterFinished }}
# exit 1 (upstream down after retries) and 2 (bad config or data) do not improve on a retry
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        containerName: datajob
        operator: In
        values: [1, 2]
    - action: Ignore
      onPodConditions:
        - type: DisruptionTarget
          status: "True"
template:
  metadata:
    labels:
      {{- include "astrobio.labels" $.root | nindent 6 }}
      app.kubernetes.io/component: datajob
      astrobio.io/source: {{ $.job.source }}
    {{- with $.job.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "astrobio.serviceAccountName" $.root }}
    automountServiceAccountToken: {{ $.root.Values.serviceAccount.automountToken }}
    enableServiceLinks: false
    securityContext:
      {{- include "astrobio.podSecurityContext" $.root | nindent 6 }}
    {{- with $.root.Values.imagePullSecrets }}
    imagePullSecrets:
      {{- range . }}
      - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
      {{- end }}
    {{- end }}
    {{- with $.job.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $.job.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $.job.affinity }}
    affinity:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      - name: datajob
        image: {{ include "astrobio.image" (dict "image" $.root.Values.images.datajobs "root" $.root) }}
        imagePullPolicy: {{ $.root.Values.images.datajobs.pullPolicy }}
        command: [astrobio-data]
        args:
          - run
          - {{ $.job.source }}
          - --root
          - {{ $.root.Values.storage.dataRoot | quote }}
          {{- if $.job.config }}
          - --config
          - /etc/astrobio-data/config.yaml
          {{- end }}
          {{- range $.job.extraArgs }}
          - {{ . | quote }}
          {{- end }}
        env:
          {{- include "astrobio.storageEnv" $.root | nindent 10 }}
          {{- with $.root.Values.monitoring.pushgatewayUrl }}
          - name: PUSHGATEWAY_URL
            value: {{ . | quote }}
          {{- end }}
          {{- with $.job.extraEnv }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        {{- with $.job.resources }}
        resources:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        securityContext:
          {{- include "astrobio.containerSecurityContext" $.root | nindent 10 }}
        volumeMounts:
          - name: tmp
            mountPath: /tmp
          {{- if $.job.config }}
          - name: source-config
            mountPath: /etc/astrobio-data
            readOnly: true
          {{- end }}
          {{- if include "astrobio.dataJobMountsPvc" (dict "root" $.root "job" $.job) }}
          - name: data
            mountPath: {{ $.root.Values.storage.pvc.mountPath }}
          {{- end }}
    volumes:
      - name: tmp
        emptyDir:
          sizeLimit: {{ $.job.tmpSize }}
      {{- if $.job.config }}
      - name: source-config
        configMap:
          name: {{ $.name }}-config
      {{- end }}
      {{- if include "astrobio.dataJobMountsPvc" (dict "root" $.root "job" $.job) }}
      - name: data
        persistentVolumeClaim:
          claimName: {{ include "astrobio.pvcName" $.root }}
      {{- end }}
{{- end -}}


{{/* a data job mounts the PVC when the data root is on it, or when it is a one-off Job (a simulation: its run
cache is shared by the pods of an Indexed Job) and the PVC exists; from {root, job} */}}
{{- define "astrobio.dataJobMountsPvc" -}}
{{- if or (include "astrobio.dataOnPvc" .root) (and (eq .job.kind "Job") .root.Values.storage.pvc.enabled) -}}true{{- end -}}
{{- end -}}

{{/* the source's --config file from {root, job}: its settings, plus count for an Indexed Job */}}
{{- define "astrobio.dataJobConfig" -}}
{{- $cfg := deepCopy .job.config -}}
{{- if and (eq .job.kind "Job") (eq .job.completionMode "Indexed") -}}
{{- if lt (int .job.completions) 2 -}}
{{- fail (printf "dataJobs for %s: an Indexed Job needs completions >= 2 (shares, then the publishing index)" .job.source) -}}
{{- end -}}
{{- $_ := set $cfg "count" (sub (int .job.completions) 1) -}}
{{- end -}}
{{- toYaml (dict .job.source $cfg) -}}
{{- end -}}
