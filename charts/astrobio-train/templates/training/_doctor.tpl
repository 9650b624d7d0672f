{{/* The doctor init container of a trainer pod from {root, name, job}: `astrobio-train doctor` on the job's
run config, with the trainer's image, env, mounts and resources (GPUs included, so it sees them); a blocker
exits 2 and the pod fails before the trainer starts. Empty when doctor.enabled is false. */}}
{{- define "astrobio.doctorInitContainers" -}}
{{- $v := .root.Values -}}
{{- if $v.doctor.enabled -}}
initContainers:
  - name: doctor
    image: {{ include "astrobio.image" (dict "image" $v.images.trainer "root" .root) }}
    imagePullPolicy: {{ $v.images.trainer.pullPolicy }}
    command: [astrobio-train]
    args:
      - doctor
      - -c
      - /etc/astrobio/config.yaml
      - --nproc-per-node={{ include "astrobio.nproc" .job }}
      {{- range $v.doctor.extraArgs }}
      - {{ . | quote }}
      {{- end }}
    env:
      {{- include "astrobio.trainerEnv" . | nindent 6 }}
    resources:
      {{- include "astrobio.trainerResources" .job | nindent 6 }}
    securityContext:
      {{- include "astrobio.containerSecurityContext" .root | nindent 6 }}
    volumeMounts:
      {{- include "astrobio.trainerVolumeMounts" . | nindent 6 }}
{{- end -}}
{{- end -}}
