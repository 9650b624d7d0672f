{{/* Trainer helpers: the run config rendered into each job's ConfigMap, and the pod template of its replicas. */}}

{{/* the enabled training jobs as YAML {name: merged values} */}}
{{- define "astrobio.enabledJobs" -}}
{{- $out := dict -}}
{{- range $name, $entry := .Values.jobs -}}
{{- $job := include "astrobio.mergeEntry" (dict "defaults" $.Values.jobDefaults "entry" $entry) | fromYaml -}}
{{- if $job.enabled -}}
{{- if not $job.component -}}
{{- fail (printf "jobs.%s.component is required (a trainer component, e.g. planets)" $name) -}}
{{- end -}}
{{- if and (eq $job.strategy "none") (gt (mul (add1 (int $job.workers)) (include "astrobio.nproc" $job | int)) 1) -}}
{{- fail (printf "jobs.%s: strategy none cannot run %d nodes x %s processes; use ddp, fsdp or deepspeed" $name (add1 (int $job.workers)) (include "astrobio.nproc" $job)) -}}
{{- end -}}
{{- $_ := set $out $name $job -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* processes per pod: nprocPerNode, else one per GPU, else 1 */}}
{{- define "astrobio.nproc" -}}
{{- if gt (int .nprocPerNode) 0 -}}{{ .nprocPerNode }}{{- else if gt (int .gpusPerNode) 0 -}}{{ .gpusPerNode }}{{- else -}}1{{- end -}}
{{- end -}}

{{/* the most processes per pod over the enabled jobs (1 when there is none) */}}
{{- define "astrobio.maxNproc" -}}
{{- $max := 1 -}}
{{- range $name, $job := include "astrobio.enabledJobs" . | fromYaml -}}
{{- $max = max $max (include "astrobio.nproc" $job | int) -}}
{{- end -}}
{{- $max -}}
{{- end -}}

{{/* run config from {root, name, job}: the job's config with the keys the chart owns filled in */}}
{{- define "astrobio.runConfig" -}}
{{- $v := .root.Values -}}
{{- $cfg := deepCopy (default (dict) .job.config) -}}
{{- $data := default (dict) (get $cfg "data") -}}
{{- if not (hasKey $data "root") -}}{{- $_ := set $data "root" $v.storage.dataRoot -}}{{- end -}}
{{- $logging := default (dict) (get $cfg "logging") -}}
{{- if not (hasKey $logging "run_dir") -}}{{- $_ := set $logging "run_dir" $v.storage.runRoot -}}{{- end -}}
{{- if not (hasKey $logging "run_name") -}}{{- $_ := set $logging "run_name" (include "astrobio.jobName" .) -}}{{- end -}}
{{- $_ := set $logging "metrics_port" (int $v.monitoring.metricsPort) -}}
{{- $dist := default (dict) (get $cfg "distributed") -}}
{{- $_ := set $dist "strategy" .job.strategy -}}
{{- $_ := set $cfg "component" .job.component -}}
{{- $_ := set $cfg "data" $data -}}
{{- $_ := set $cfg "logging" $logging -}}
{{- $_ := set $cfg "distributed" $dist -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* pod template of a replica from {root, name, job} */}}
{{- define "astrobio.trainerPod" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $job := .job -}}
{{- $nproc := include "astrobio.nproc" $job | int -}}
metadata:
  labels:
    {{- include "astrobio.labels" $root | nindent 4 }}
    app.kubernetes.io/component: trainer
    astrobio.io/job: {{ .name }}
  annotations:
    checksum/config: {{ include "astrobio.runConfig" . | sha256sum }}
    {{- with $job.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "astrobio.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountToken }}
  terminationGracePeriodSeconds: {{ $job.terminationGracePeriodSeconds }}
  enableServiceLinks: false
  securityContext:
    {{- include "astrobio.podSecurityContext" $root | nindent 4 }}
  {{- with $job.schedulerName }}
  schedulerName: {{ . }}
  {{- end }}
  {{- with $job.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
    {{- end }}
  {{- end }}
  {{- with $job.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $job.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $job.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: pytorch
      image: {{ include "astrobio.image" (dict "image" $v.images.trainer "root" $root) }}
      imagePullPolicy: {{ $v.images.trainer.pullPolicy }}
      # `astrobio-train run` starts --nproc-per-node workers itself from the operator's PET_* variables
      # (torch elastic, like torchrun) and exits with the failed worker's own code, so restartPolicy ExitCode
      # sees 2, 3 or 143 where torchrun would exit 1; with one process per pod it trains in-process.
      command: [astrobio-train]
      args:
        - run
        - -c
        - /etc/astrobio/config.yaml
        - --nproc-per-node={{ $nproc }}
        {{- range $job.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        {{- include "astrobio.storageEnv" $root | nindent 8 }}
        - name: MPLCONFIGDIR
          value: /tmp/.matplotlib
        - name: TRITON_CACHE_DIR
          value: /tmp/.triton
        - name: TORCHINDUCTOR_CACHE_DIR
          value: /tmp/.inductor
        {{- with $job.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: pytorchjob-port
          containerPort: 23456
          protocol: TCP
        {{- range $rank := until $nproc }}
        - name: {{ ternary "metrics" (printf "metrics-%d" $rank) (eq $rank 0) }}
          containerPort: {{ add $v.monitoring.metricsPort $rank }}
          protocol: TCP
        {{- end }}
      resources:
        {{- $resources := deepCopy (default (dict) $job.resources) }}
        {{- if gt (int $job.gpusPerNode) 0 }}
        {{- $limits := default (dict) (get $resources "limits") }}
        {{- $_ := set $limits "nvidia.com/gpu" (int $job.gpusPerNode) }}
        {{- $_ := set $resources "limits" $limits }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- include "astrobio.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: run-config
          mountPath: /etc/astrobio
          readOnly: true
        - name: tmp
          mountPath: /tmp
        - name: dshm
          mountPath: /dev/shm
        {{- if $v.storage.pvc.enabled }}
        - name: data
          mountPath: {{ $v.storage.pvc.mountPath }}
        {{- end }}
  volumes:
    - name: run-config
      configMap:
        name: {{ include "astrobio.jobName" . }}-config
    - name: tmp
      emptyDir:
        sizeLimit: {{ $job.tmpSize }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $job.shmSize }}
    {{- if $v.storage.pvc.enabled }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ include "astrobio.pvcName" $root }}
    {{- end }}
{{- end -}}
