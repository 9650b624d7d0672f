{{/* Tune helpers: the training job the trials start from, as the {root, name, job} context of the trainer helpers. */}}

{{/* context of the tune Job as YAML: the `jobs` entry tune.job merged with jobDefaults, one process per pod */}}
{{- define "astrobio.tuneJob" -}}
{{- $t := .Values.tune -}}
{{- if not (hasKey .Values.jobs $t.job) -}}
{{- fail (printf "tune.job %q is not a key of jobs (%s)" $t.job (keys .Values.jobs | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if not $t.database.existingSecret -}}
{{- fail "tune.database.existingSecret is required: the Optuna storage URL comes from a Secret, never from values" -}}
{{- end -}}
{{- $job := include "astrobio.mergeEntry" (dict "defaults" .Values.jobDefaults "entry" (index .Values.jobs $t.job)) | fromYaml -}}
{{- $_ := set $job "strategy" "none" -}}
{{- $_ := set $job "workers" 0 -}}
{{- $_ := set $job "nprocPerNode" 1 -}}
{{- $_ := set $job "runId" (ternary (printf "%s-tune" (toString $job.runId)) "tune" (ne (toString $job.runId) "")) -}}
{{- toYaml $job -}}
{{- end -}}
