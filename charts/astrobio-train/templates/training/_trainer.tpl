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
{{- $runDir := default $.Values.storage.runRoot (get (default (dict) (get (default (dict) $job.config) "logging")) "run_dir") -}}
{{- if not (contains "://" $runDir) -}}
{{- $mount := trimSuffix "/" $.Values.storage.pvc.mountPath -}}
{{- if not (and $.Values.storage.pvc.enabled (or (eq (trimSuffix "/" $runDir) $mount) (hasPrefix (printf "%s/" $mount) $runDir))) -}}
{{- fail (printf "jobs.%s: run folder %q is on the pod's own disk (not below storage.pvc.mountPath %q of an enabled PVC), so its checkpoints would be lost with the pod; set storage.runRoot to an object-store URL (s3://bucket/runs) or enable storage.pvc" $name $runDir $.Values.storage.pvc.mountPath) -}}
{{- end -}}
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

{{/* TrainJob scrape targets as YAML {nproc: most processes per pod, containers: trainer container names} */}}
{{- define "astrobio.trainJobPorts" -}}
{{- $nproc := 0 -}}
{{- $containers := list -}}
{{- range $name, $job := include "astrobio.enabledJobs" . | fromYaml -}}
{{- if eq $job.kind "TrainJob" -}}
{{- $nproc = max $nproc (include "astrobio.nproc" $job | int) -}}
{{- $containers = append $containers $job.trainJob.container | uniq -}}
{{- end -}}
{{- end -}}
{{- toYaml (dict "nproc" $nproc "containers" $containers) -}}
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

{{/* the launcher's checkpoint window on SIGTERM: terminationGracePeriodSeconds less a margin for the exit */}}
{{- define "astrobio.shutdownTimeout" -}}
{{- sub (int .terminationGracePeriodSeconds) 30 -}}
{{- end -}}

{{/* labels of the trainer pods from {root, name, job} */}}
{{- define "astrobio.trainerPodLabels" -}}
{{ include "astrobio.labels" .root }}
app.kubernetes.io/component: trainer
astrobio.io/job: {{ .name }}
{{- end -}}

{{/* annotations of the trainer pods from {root, name, job} */}}
{{- define "astrobio.trainerPodAnnotations" -}}
checksum/config: {{ include "astrobio.runConfig" . | sha256sum }}
{{- with .job.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* the trainer container's image, command and args from {root, name, job} */}}
{{- define "astrobio.trainerCommand" -}}
{{- $v := .root.Values -}}
image: {{ include "astrobio.image" (dict "image" $v.images.trainer "root" .root) }}
# `astrobio-train run` starts --nproc-per-node workers itself from the operator's PET_* variables
# (torch elastic, like torchrun) and exits with the failed worker's own code, so restartPolicy ExitCode
# sees 2, 3 or 143 where torchrun would exit 1; with one process per pod it trains in-process.
command: [astrobio-train]
args:
  - run
  - -c
  - /etc/astrobio/config.yaml
  - --nproc-per-node={{ include "astrobio.nproc" .job }}
  {{- range .job.extraArgs }}
  - {{ . | quote }}
  {{- end }}
{{- end -}}

{{/* the trainer container's env from {root, name, job} */}}
{{- define "astrobio.trainerEnv" -}}
{{ include "astrobio.storageEnv" .root }}
- name: MPLCONFIGDIR
  value: /tmp/.matplotlib
- name: TRITON_CACHE_DIR
  value: /tmp/.triton
- name: TORCHINDUCTOR_CACHE_DIR
  value: /tmp/.inductor
# seconds the ranks get on SIGTERM to write their checkpoint, inside terminationGracePeriodSeconds
- name: ASTROBIO_SHUTDOWN_TIMEOUT_SECONDS
  value: {{ include "astrobio.shutdownTimeout" .job | quote }}
{{- with .root.Values.monitoring.pushgatewayUrl }}
# the run report's metrics (astrobio_eval_metric) are pushed here once, grouped by run and namespace
- name: PUSHGATEWAY_URL
  value: {{ . | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}
{{- with .job.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* the trainer container's resources (GPUs as nvidia.com/gpu limits) from a job */}}
{{- define "astrobio.trainerResources" -}}
{{- $resources := deepCopy (default (dict) .resources) -}}
{{- if gt (int .gpusPerNode) 0 -}}
{{- $limits := default (dict) (get $resources "limits") -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpusPerNode) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* the trainer container's volume mounts from {root, name, job} */}}
{{- define "astrobio.trainerVolumeMounts" -}}
- name: run-config
  mountPath: /etc/astrobio
  readOnly: true
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if .root.Values.storage.pvc.enabled }}
- name: data
  mountPath: {{ .root.Values.storage.pvc.mountPath }}
{{- end }}
{{- end -}}

{{/* the trainer pod's volumes from {root, name, job} */}}
{{- define "astrobio.trainerVolumes" -}}
- name: run-config
  configMap:
    name: {{ include "astrobio.jobName" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: {{ .job.tmpSize }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .job.shmSize }}
{{- if .root.Values.storage.pvc.enabled }}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "astrobio.pvcName" .root }}
{{- end }}
{{- end -}}

{{/* imagePullSecrets as a list of references (the values take names or {name}) */}}
{{- define "astrobio.pullSecrets" -}}
{{- range .Values.imagePullSecrets }}
- name: {{ if kindIs "string" . }}{{ . }}{{ else }}{{ .name }}{{ end }}
{{- end }}
{{- end -}}

{{/* the scheduling part of the trainer pod spec (node selector, tolerations, affinity) from a job */}}
{{- define "astrobio.trainerPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* pod template of a PyTorchJob replica from {root, name, job} */}}
{{- define "astrobio.trainerPod" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $job := .job -}}
{{- $nproc := include "astrobio.nproc" $job | int -}}
metadata:
  labels:
    {{- include "astrobio.trainerPodLabels" . | nindent 4 }}
  annotations:
    {{- include "astrobio.trainerPodAnnotations" . | nindent 4 }}
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
    {{- include "astrobio.pullSecrets" $root | trim | nindent 4 }}
  {{- end }}
  {{- with include "astrobio.trainerPlacement" $job }}
  {{- . | trim | nindent 2 }}
  {{- end }}
  {{- with include "astrobio.doctorInitContainers" . }}
  {{- . | nindent 2 }}
  {{- end }}
  containers:
    - name: pytorch
      {{- include "astrobio.trainerCommand" . | nindent 6 }}
      imagePullPolicy: {{ $v.images.trainer.pullPolicy }}
      env:
        {{- include "astrobio.trainerEnv" . | nindent 8 }}
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
        {{- include "astrobio.trainerResources" $job | nindent 8 }}
      securityContext:
        {{- include "astrobio.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "astrobio.trainerVolumeMounts" . | nindent 8 }}
  volumes:
    {{- include "astrobio.trainerVolumes" . | nindent 4 }}
{{- end -}}
